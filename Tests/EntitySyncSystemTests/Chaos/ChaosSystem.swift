import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import EntitySyncTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization

/// Where a chaos system keeps its stores and which broker it uses.
struct ChaosSetup: Sendable {
    enum Storage: Sendable { case sqlite, postgres }
    /// SQLite files in the test's folder, or one schema per service on the test PostgreSQL.
    var storage = Storage.sqlite
    /// On the 3-node test cluster (every service given all three URLs) instead of the single broker.
    var onCluster = false
    /// A second producer on the same source store (PostgreSQL only).
    var producers = 1
}

/// The whole system as real processes of the built binary: a producer, two user-rpc and two
/// org-rpc instances (each pair sharing its group's store), in a private vhost, so faults can be
/// dealt the way production meets them: SIGKILL, SIGSTOP, a broker that goes away.
final class ChaosSystem: Sendable {
    static let token = "chaos-token-0123456789"
    static let consumers = ["user-rpc-1", "user-rpc-2", "org-rpc-1", "org-rpc-2"]
    static let groups = [("consumer_user_rpc", "user-rpc"), ("consumer_org_rpc", "org-rpc")]

    let host: TestVirtualHost
    let setup: ChaosSetup
    let ports: [String: Int]
    private let heartbeat: Int
    /// Per service (producer, user-rpc, org-rpc): the broker URL it connects with.
    private let urls: [String: String]
    private let declareTopology: Bool
    private let processes = Mutex<[String: ChildProcess]>([:])

    /// Starts the producer, then all four consumer instances at once (as replicas do), and
    /// waits until every one reports SERVING.
    static func start(_ name: String, heartbeat: Int = 10, host: TestVirtualHost? = nil, urls: [String: String] = [:],
                      declareTopology: Bool = true, setup: ChaosSetup = ChaosSetup()) async throws -> ChaosSystem {
        var ports: [String: Int] = [:]
        let producers = setup.producers == 2 ? ["producer", "producer-2"] : ["producer"]
        for instance in producers + Self.consumers { ports[instance] = try freePort() }
        let system = ChaosSystem(host: try host ?? TestVirtualHost(name, onCluster: setup.onCluster), setup: setup, ports: ports,
                                 heartbeat: heartbeat, urls: urls, declareTopology: declareTopology)
        try FileManager.default.createDirectory(atPath: system.logDirectory, withIntermediateDirectories: true)
        try system.launch("producer")
        try await system.waitServing("producer")
        for instance in producers.dropFirst() { try system.launch(instance) }
        for instance in producers.dropFirst() { try await system.waitServing(instance) }
        for instance in Self.consumers { try system.launch(instance) }
        for instance in Self.consumers { try await system.waitServing(instance) }
        return system
    }

    private init(host: TestVirtualHost, setup: ChaosSetup, ports: [String: Int], heartbeat: Int, urls: [String: String],
                 declareTopology: Bool) {
        self.host = host
        self.setup = setup
        self.ports = ports
        self.heartbeat = heartbeat
        self.urls = urls
        self.declareTopology = declareTopology
    }

    var logDirectory: String { self.host.directory + "/logs" }
    var producerPort: Int { self.ports["producer", default: 0] }

    static func service(of instance: String) -> String {
        instance.hasPrefix("producer") ? "producer" : String(instance.dropLast(2))
    }

    /// Every instance this system runs.
    var instances: [String] { (self.setup.producers == 2 ? ["producer", "producer-2"] : ["producer"]) + Self.consumers }

    /// `--db` for `service`: its SQLite file, or its own schema on the test PostgreSQL.
    func storeLocation(_ service: String) -> String {
        switch self.setup.storage {
        case .sqlite:
            return self.host.path(service)
        case .postgres:
            let base = StoreBackend.postgresURL ?? ""
            let schema = "\(self.host.name)_\(service)".replacingOccurrences(of: "-", with: "_")
            return base + (base.contains("?") ? "&" : "?") + "schema=\(schema)"
        }
    }

    /// The producer's store, opened as a second reader.
    func source() async throws -> any SourceStore {
        try await StoreLocation(self.storeLocation("producer")).openSource(producer: "chaos-check", logger: Broker.logger("chaos"))
    }

    /// A group's store (by service name), opened as another reader.
    func replica(_ service: String) async throws -> any ReplicaStore {
        let group = ConsumerService.Kind(rawValue: service)?.group ?? service
        return try await StoreLocation(self.storeLocation(service)).openReplica(group: group, logger: Broker.logger("chaos"))
    }

    /// Every group's store, as `groups` names them.
    func replicas() async throws -> [(String, any ReplicaStore)] {
        var stores: [(String, any ReplicaStore)] = []
        for (group, service) in Self.groups { stores.append((group, try await self.replica(service))) }
        return stores
    }

    /// Starts `instance` (again), appending to its log; `url` overrides the service's broker URL.
    @discardableResult
    func launch(_ instance: String, url: String? = nil, declareTopology: Bool? = nil) throws -> ChildProcess {
        let service = Self.service(of: instance)
        var arguments = [service, "--listen", "127.0.0.1:\(self.ports[instance, default: 0])", "--db", self.storeLocation(service),
                         "--name", "\(self.host.name)-\(instance)"]
        if service != "producer" {
            arguments += ["--producer", "127.0.0.1:\(self.producerPort)", "--prefetch", "16",
                          "--declare-topology", "\(declareTopology ?? self.declareTopology)"]
        }
        let base = url ?? self.urls[service] ?? self.host.url
        // Settings go on the first URL of a list: the client reads them from there.
        var nodes = base.split(separator: ",").map(String.init)
        nodes[0] += "?heartbeat=\(self.heartbeat)&connection_timeout=3000"
        let environment = ProcessInfo.processInfo.environment.merging([
            "ENTITY_SYNC_AMQP_URL": nodes.joined(separator: ","),
            "ENTITY_SYNC_TOKEN": Self.token, "ENTITY_SYNC_LOG_LEVEL": "info",
        ]) { $1 }
        let process = try ChildProcess(entitySyncBinary, arguments, environment: environment, log: self.logPath(instance))
        self.processes.withLock { $0[instance] = process }
        return process
    }

    func logPath(_ instance: String) -> String { "\(self.logDirectory)/\(instance).log" }

    func log(_ instance: String) -> String {
        (try? String(contentsOfFile: self.logPath(instance), encoding: .utf8)) ?? ""
    }

    /// The last lines of every log, for failure messages.
    func logTails(lines: Int = 15) -> String {
        self.instances.map { instance in
            "--- \(instance)\n" + self.log(instance).split(separator: "\n").suffix(lines).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    func process(_ instance: String) -> ChildProcess? { self.processes.withLock { $0[instance] } }

    func signal(_ instance: String, _ signal: Int32) throws {
        guard let process = self.process(instance), process.isRunning else { throw HarnessError("\(instance) is not running") }
        process.signal(signal)
    }

    /// SIGKILLs `instance` and waits until it is gone.
    func kill9(_ instance: String) async throws {
        try self.signal(instance, SIGKILL)
        try await eventually("\(instance) killed") { self.process(instance)?.isRunning == false }
    }

    func waitServing(_ instance: String, timeout: Duration = .seconds(60)) async throws {
        let port = self.ports[instance, default: 0]
        do {
            try await eventually("\(instance) SERVING", timeout: timeout) {
                if self.process(instance)?.isRunning == false {
                    throw HarnessError("\(instance) ended: \(self.process(instance)?.termination ?? "?")")
                }
                return await healthStatus(port: port) == .serving
            }
        } catch {
            throw HarnessError("\(error)\n\(self.logTails())")
        }
    }

    /// Compares every store, checking the confirmed changes too.
    func check(confirmed: [EntityKind: [String: UInt64]]) async throws -> ConvergenceReport {
        try await ConvergenceReport.check(source: try await self.source(), groups: try await self.replicas(), confirmed: confirmed)
    }

    /// Waits until every store holds exactly what the producer holds; returns the last report.
    func waitConverged(confirmed: [EntityKind: [String: UInt64]], timeout: Duration = .seconds(120)) async throws -> ConvergenceReport {
        let deadline = ContinuousClock.now + timeout
        while true {
            let report = try await self.check(confirmed: confirmed)
            if report.converged || ContinuousClock.now > deadline { return report }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// SIGTERMs every running instance and reports any that did not exit 0 within 30 s.
    func stop() async throws -> [String] {
        let running = self.processes.withLock { $0 }.filter { $0.value.isRunning }
        for process in running.values { process.signal(SIGTERM) }
        var failures: [String] = []
        for (instance, process) in running.sorted(by: { $0.key < $1.key }) {
            do {
                try await eventually("\(instance) exited", timeout: .seconds(30)) { !process.isRunning }
                if !process.exitedCleanly { failures.append("\(instance) ended with \(process.termination)") }
            } catch {
                process.signal(SIGKILL)
                failures.append("\(instance) ignored SIGTERM for 30 s")
            }
        }
        return failures
    }

    /// Kills whatever still runs and removes the vhost and files (for failure paths too).
    func tearDown() {
        for process in self.processes.withLock({ Array($0.values) }) { process.signal(SIGKILL) }
        if ProcessInfo.processInfo.environment["ENTITY_SYNC_CHAOS_KEEP"] == nil { self.host.tearDown() }
    }

    var authorized: Metadata {
        var metadata = Metadata()
        metadata.addString("Bearer \(Self.token)", forKey: "authorization")
        return metadata
    }

    /// Runs `body` with a gRPC client connected to `instance`.
    func withClient<T: Sendable>(_ instance: String,
                                 _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: self.ports[instance, default: 0]),
                                                           transportSecurity: .plaintext)) { client in
            try await body(client)
        }
    }

    /// The producer's outbox backlog (events not yet confirmed by the broker).
    func outboxPending(via instance: String = "producer") async throws -> UInt64 {
        try await self.withClient(instance) { client in
            try await Entitysync_V1_EntityAdmin.Client(wrapping: client).getOutboxStatus(Entitysync_V1_GetOutboxStatusRequest()).pendingEvents
        }
    }
}
