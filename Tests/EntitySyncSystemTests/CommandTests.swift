import EntitySyncGRPC
import EntitySyncPostgres
import EntitySyncProto
import EntitySyncTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The built `entity-sync` executable, next to the test bundle.
let entitySyncBinary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    .appendingPathComponent("entity-sync").path

/// The overall grpc.health status of the server on 127.0.0.1:`port`, or nil if it does not answer.
func healthStatus(port: Int) async -> Grpc_Health_V1_HealthCheckResponse.ServingStatus? {
    try? await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port),
                                                        transportSecurity: .plaintext)) { client in
        try await Grpc_Health_V1_Health.Client(wrapping: client).check(Grpc_Health_V1_HealthCheckRequest()).status
    }
}

/// Runs the command to completion; returns its exit code (-1 if a signal ended it) and combined output.
func run(_ arguments: [String], environment: [String: String] = [:]) throws -> (Int32, String) {
    let completion = try ChildProcess.run(entitySyncBinary, arguments,
                                          environment: ProcessInfo.processInfo.environment.merging(environment) { $1 })
    return (completion.exitCode ?? -1, completion.output)
}

@Suite(.enabled(if: Broker.isAvailable && FileManager.default.isExecutableFile(atPath: entitySyncBinary),
                "needs the private broker and the built entity-sync"))
struct CommandTests {
    @Test func producerRunsServesMetricsAndStopsGracefullyOnSIGTERM() async throws {
        let host = try TestVirtualHost("command")
        defer { host.tearDown() }
        let grpcPort = try freePort()
        let metricsPort = try freePort()
        let log = host.directory + "/producer.log"
        try FileManager.default.createDirectory(atPath: host.directory, withIntermediateDirectories: true)
        // Flags and environment mixed, as a deployment would.
        let producer = try ChildProcess(entitySyncBinary, ["producer", "--listen", "127.0.0.1:\(grpcPort)",
                                                           "--db", host.path("producer"),
                                                           "--metrics-listen", "127.0.0.1:\(metricsPort)"],
                                        environment: ProcessInfo.processInfo.environment.merging([
                                            "ENTITY_SYNC_AMQP_URL": host.url, "ENTITY_SYNC_TOKEN": "cmd-token",
                                            "ENTITY_SYNC_LOG_LEVEL": "info",
                                        ]) { $1 }, log: log)
        defer { producer.signal(SIGKILL) }

        try await eventually("producer SERVING") {
            return await healthStatus(port: grpcPort) == .serving
        }

        let (denied, deniedOutput) = try run(["ctl", "user", "create", "--id", "ada", "--name", "Ada", "--email", "ada@example.com",
                                              "--producer", "127.0.0.1:\(grpcPort)"])
        #expect(denied != 0)
        #expect(deniedOutput.contains("unauthenticated"), "\(deniedOutput)")
        let (status, output) = try run(["ctl", "user", "create", "--id", "ada", "--name", "Ada", "--email", "ada@example.com",
                                        "--producer", "127.0.0.1:\(grpcPort)", "--token", "cmd-token"])
        #expect(status == 0, "\(output)")
        #expect(output.contains("ada") && output.contains("ada@example.com"))
        let (jsonStatus, json) = try run(["ctl", "user", "get", "ada", "--from", "producer", "--json",
                                          "--producer", "127.0.0.1:\(grpcPort)"])
        #expect(jsonStatus == 0 && json.contains("\"email\":\"ada@example.com\""), "\(json)")

        let (data, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(metricsPort)/metrics")!)
        let metrics = String(decoding: data, as: UTF8.self)
        #expect(metrics.contains("entitysync_rpc_requests_total"))
        #expect(metrics.contains("unauthenticated"), "failed RPCs are counted by status")
        try await eventually("outbox metrics") {
            let (data, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(metricsPort)/metrics")!)
            return String(decoding: data, as: UTF8.self).contains("entitysync_outbox_confirmed_total")
        }

        producer.signal(SIGTERM)
        try await producer.waitForExit("producer exited", timeout: .seconds(20))
        #expect(producer.exitedCleanly, "\(producer.termination)")
        let logText = try String(contentsOfFile: log, encoding: .utf8)
        #expect(logText.contains("producer shutting down"))
        #expect(logText.contains("amqp connection closed"))
        #expect(!logText.contains("cmd-token"), "the token must never be logged")
    }

    @Test func badConfigurationIsAClearError() throws {
        let (status, output) = try run(["producer", "--queue-type", "lazy"])
        #expect(status != 0)
        #expect(output.contains("--queue-type must be quorum or classic"))
        for threads in ["0", "257", "many"] {
            let (threadsStatus, threadsOutput) = try run(["producer", "--rpc-threads", threads])
            #expect(threadsStatus != 0)
            #expect(threadsOutput.contains("--rpc-threads must be a whole number from 1 to 256, not '\(threads)'"), "\(threadsOutput)")
        }
        let (urlStatus, urlOutput) = try run(["producer", "--amqp-url", "http://nope"])
        #expect(urlStatus != 0)
        #expect(urlOutput.contains("amqp://"))
        let (help, helpText) = try run(["producer", "--help"])
        #expect(help == 0)
        #expect(helpText.contains("ENTITY_SYNC_AMQP_URL") && helpText.contains("default: quorum"))
    }

    /// `--rpc-threads` (here from the environment) sets how many event-loop threads serve gRPC:
    /// a service started with one has one such thread, and answers on it.
    @Test func rpcThreadsSetsTheServersLoopThreads() async throws {
        let host = try TestVirtualHost("rpc-threads")
        defer { host.tearDown() }
        try FileManager.default.createDirectory(atPath: host.directory, withIntermediateDirectories: true)
        let port = try freePort()
        let service = try ChildProcess(entitySyncBinary, ["user-rpc", "--listen", "127.0.0.1:\(port)", "--db", host.path("user-rpc")],
                                       environment: ProcessInfo.processInfo.environment.merging([
                                           "ENTITY_SYNC_AMQP_URL": host.url, "ENTITY_SYNC_RPC_THREADS": "1",
                                       ]) { $1 }, log: host.directory + "/user-rpc.log")
        defer { service.signal(SIGKILL) }
        try await eventually("user-rpc SERVING") { await healthStatus(port: port) == .serving }
        // NIO names the threads of a group it makes "NIO-ELT-<group>-#<thread>" (its shared group's
        // are "NIO-SGLTN-…"); the server makes a group of its own whenever a count is given.
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(service.pid)/task")
        let names = tasks.compactMap { try? String(contentsOfFile: "/proc/\(service.pid)/task/\($0)/comm", encoding: .utf8) }
        #expect(names.filter { $0.hasPrefix("NIO-ELT-") }.count == 1, "\(names.sorted())")
        service.signal(SIGTERM)
        try await service.waitForExit("user-rpc exited", timeout: .seconds(20))
        #expect(service.exitedCleanly, "\(service.termination)")
    }

    @Test(arguments: ["producer", "user-rpc", "org-rpc"])
    func sigtermWhileTheBrokerIsUnreachableStopsAtOnce(command: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("entitysync-unreachable-\(command)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = directory + "/service.log"
        // Port 1 on loopback: nothing listens, so the service keeps retrying the broker.
        let service = try ChildProcess(entitySyncBinary, [command, "--amqp-url", "amqp://guest:guest@127.0.0.1:1/",
                                                          "--listen", "127.0.0.1:\(try freePort())",
                                                          "--db", directory + "/store.sqlite"], log: log)
        defer { service.signal(SIGKILL) }
        try await eventually("the service retries the broker") {
            (try String(contentsOfFile: log, encoding: .utf8)).contains("broker not reachable yet")
        }
        service.signal(SIGTERM)
        try await service.waitForExit("\(command) exited", timeout: .seconds(10))
        let text = try String(contentsOfFile: log, encoding: .utf8)
        #expect(service.exitedCleanly, "\(service.termination): \(text)")
        #expect(text.contains("stopped before it was ready"), "\(text)")
    }

    /// The binary on PostgreSQL: `--db` takes the URL, a group's instance bootstraps and applies
    /// into its own schema, `check` compares the stores there, and the password shows nowhere.
    @Test(.enabled(if: StoreBackend.postgresURL != nil, "needs the test PostgreSQL (scripts/test starts one)"))
    func servicesAndCheckOnPostgres() async throws {
        let host = try TestVirtualHost("pgcommand")
        defer { host.tearDown() }
        try FileManager.default.createDirectory(atPath: host.directory, withIntermediateDirectories: true)
        let base = try #require(StoreBackend.postgresURL)
        let password = try #require(try PostgresURL(base).password)
        let producerDB = base + "&schema=\(host.name)_producer"
        let groupDB = base + "&schema=\(host.name)_user_rpc"
        let (producerPort, userPort) = (try freePort(), try freePort())
        let environment = ProcessInfo.processInfo.environment.merging(["ENTITY_SYNC_AMQP_URL": host.url]) { $1 }
        let producer = try ChildProcess(entitySyncBinary, ["producer", "--listen", "127.0.0.1:\(producerPort)", "--db", producerDB],
                                        environment: environment, log: host.directory + "/producer.log")
        defer { producer.signal(SIGKILL) }
        let consumer = try ChildProcess(entitySyncBinary, ["user-rpc", "--listen", "127.0.0.1:\(userPort)", "--db", groupDB,
                                                           "--producer", "127.0.0.1:\(producerPort)"],
                                        environment: environment, log: host.directory + "/user-rpc.log")
        defer { consumer.signal(SIGKILL) }
        try await eventually("both SERVING", timeout: .seconds(60)) {
            let producerServing = await healthStatus(port: producerPort) == .serving
            let consumerServing = await healthStatus(port: userPort) == .serving
            return producerServing && consumerServing
        }
        let (created, createdOutput) = try run(["ctl", "user", "create", "--id", "ada", "--name", "Ada", "--email", "ada@example.com",
                                                "--producer", "127.0.0.1:\(producerPort)"])
        #expect(created == 0, "\(createdOutput)")
        let (checked, report) = try run(["check", "--producer-db", producerDB, "--group", "user-rpc=\(groupDB)", "--wait", "20"])
        #expect(checked == 0 && report.contains("converged") && !report.contains("NOT"), "\(report)")
        #expect(report.contains("consumer_user_rpc") && report.contains("1 entities"), "\(report)")

        // A wrong password stops the start with the reason, and shows neither password.
        var wrong = try PostgresURL(groupDB)
        wrong.password = "wrong-\(password.prefix(3))x"
        let wrongURL = groupDB.replacingOccurrences(of: ":\(password)@", with: ":\(wrong.password ?? "")@")
        let (refused, refusal) = try run(["user-rpc", "--listen", "127.0.0.1:\(try freePort())", "--db", wrongURL],
                                         environment: ["ENTITY_SYNC_AMQP_URL": host.url])
        #expect(refused != 0 && refusal.contains("refused the login"), "\(refusal)")
        producer.signal(SIGTERM)
        consumer.signal(SIGTERM)
        try await producer.waitForExit("producer exited", timeout: .seconds(20))
        try await consumer.waitForExit("user-rpc exited", timeout: .seconds(20))
        for text in [refusal, report] + ["producer", "user-rpc"].map({ (try? String(contentsOfFile: host.directory + "/\($0).log",
                                                                                     encoding: .utf8)) ?? "" }) {
            #expect(!text.contains(password) && !text.contains(wrong.password ?? "?"), "a password was shown: \(text)")
        }
    }
}
