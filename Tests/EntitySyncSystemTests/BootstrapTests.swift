import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import ServiceLifecycle
import Testing

/// A producer store holding users (one updated, one deleted) and a group, whose history was
/// already published and acked: its outbox is empty, so the group's queues will bring nothing of it.
private func seededProducerStore(_ path: String) async throws -> SQLiteSourceStore {
    let source = try SQLiteSourceStore(path: path, producer: "seed")
    for index in 0..<40 {
        _ = try await source.createUser(UserDraft(id: "u\(index)", name: "User \(index)", email: "u\(index)@example.com"))
    }
    _ = try await source.updateUser(UserDraft(id: "u1", name: "Renamed", email: "u1@example.com"), expectedVersion: 1)
    _ = try await source.deleteUser(id: "u3", expectedVersion: nil)
    _ = try await source.createGroup(GroupDraft(id: "g1", name: "Group", memberIDs: ["u1", "u2"]))
    while true {
        let records = try await source.claimOutbox(owner: "seed", lease: .milliseconds(1), limit: 500)
        if records.isEmpty { break }
        try await source.removeOutbox(records.map(\.sequence))
    }
    return source
}

private func storesMatch(_ replica: SQLiteReplicaStore, _ source: SQLiteSourceStore) async throws -> Bool {
    let users = try await replica.versions(of: .user)
    let groups = try await replica.versions(of: .group)
    let expectedUsers = try await source.versions(of: .user)
    let expectedGroups = try await source.versions(of: .group)
    return users == expectedUsers && groups == expectedGroups
}

/// The SyncStatus the consumer service on 127.0.0.1:`port` reports.
private func syncStatus(port: Int) async throws -> Entitysync_V1_SyncStatus {
    try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port),
                                                       transportSecurity: .plaintext)) { client in
        try await Entitysync_V1_SyncInfo.Client(wrapping: client).getSyncStatus(Entitysync_V1_GetSyncStatusRequest())
    }
}

/// The test process's environment without EntitySync settings, so only the flags configure a child.
private func childEnvironment() -> [String: String] {
    var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ENTITY_SYNC_") }
    environment["ENTITY_SYNC_LOG_LEVEL"] = "info"
    return environment
}

private func contents(_ log: String) -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

/// Starts the built binary as `arguments`, logging to `log`.
private func start(_ arguments: [String], log: String) throws -> ChildProcess {
    try ChildProcess(entitySyncBinary, arguments, environment: childEnvironment(), log: log)
}

@Suite(.enabled(if: Broker.isAvailable && FileManager.default.isExecutableFile(atPath: entitySyncBinary),
                "needs the private broker and the built entity-sync"))
struct BootstrapTests {
    /// Issue 12.1: `scripts/run` on a fresh data folder, or containers started in any order,
    /// start a consumer before its producer listens. It must wait (health NOT_SERVING) and load
    /// the snapshot once the producer is up, not exit.
    @Test func aConsumerWaitsForAProducerThatIsNotListeningYet() async throws {
        let host = try TestVirtualHost("waitproducer")
        defer { host.tearDown() }
        let source = try await seededProducerStore(host.path("producer"))
        let producerPort = try freePort()
        let consumerPort = try freePort()
        let log = host.directory + "/user-rpc.log"
        let consumer = try start(["user-rpc", "--amqp-url", host.url, "--listen", "127.0.0.1:\(consumerPort)",
                                  "--db", host.path("user-rpc"), "--producer", "127.0.0.1:\(producerPort)"], log: log)
        defer { consumer.signal(SIGKILL) }
        try await eventually("user-rpc answers health while it waits for the producer") {
            guard consumer.isRunning else {
                throw HarnessError("user-rpc ended (\(consumer.termination)) instead of waiting for the producer:\n\(contents(log))")
            }
            return await healthStatus(port: consumerPort) == .notServing
                && contents(log).contains("producer's snapshot not available yet")
        }
        #expect(try await syncStatus(port: consumerPort).bootstrap == .inProgress)

        let producerLog = host.directory + "/producer.log"
        let producer = try start(["producer", "--amqp-url", host.url, "--listen", "127.0.0.1:\(producerPort)",
                                  "--db", host.path("producer")], log: producerLog)
        defer { producer.signal(SIGKILL) }
        try await eventually("user-rpc SERVING once the producer is up", timeout: .seconds(60)) {
            guard consumer.isRunning else { throw HarnessError("user-rpc ended (\(consumer.termination)):\n\(contents(log))") }
            return await healthStatus(port: consumerPort) == .serving
        }
        let replica = try SQLiteReplicaStore(path: host.path("user-rpc"))
        #expect(try await storesMatch(replica, source), "the snapshot is loaded before the consumer serves")
        let status = try await syncStatus(port: consumerPort)
        #expect(status.bootstrap == .complete && status.hasBootstrapCompletedAt)
        let users = status.entities.first { $0.entityType == .user }
        #expect(users?.snapshotEntities == 40 && users?.snapshotHighestVersion == 2, "\(status)")

        consumer.signal(SIGTERM)
        producer.signal(SIGTERM)
        try await eventually("both exited", timeout: .seconds(20)) { !consumer.isRunning && !producer.isRunning }
        #expect(consumer.exitedCleanly, "\(consumer.termination)\n\(contents(log))")
        #expect(producer.exitedCleanly, "\(producer.termination)")
    }

    @Test func sigtermWhileWaitingForTheProducerStopsAtOnce() async throws {
        let host = try TestVirtualHost("waitsigterm")
        defer { host.tearDown() }
        try FileManager.default.createDirectory(atPath: host.directory, withIntermediateDirectories: true)
        let consumerPort = try freePort()
        let log = host.directory + "/org-rpc.log"
        let consumer = try start(["org-rpc", "--amqp-url", host.url, "--listen", "127.0.0.1:\(consumerPort)",
                                  "--db", host.path("org-rpc"), "--producer", "127.0.0.1:\(try freePort())"], log: log)
        defer { consumer.signal(SIGKILL) }
        try await eventually("org-rpc waits for the producer") {
            guard consumer.isRunning else { throw HarnessError("org-rpc ended (\(consumer.termination)):\n\(contents(log))") }
            return await healthStatus(port: consumerPort) == .notServing
                && contents(log).contains("producer's snapshot not available yet")
        }
        let signalled = ContinuousClock.now
        consumer.signal(SIGTERM)
        try await eventually("org-rpc exited", timeout: .seconds(10)) { !consumer.isRunning }
        #expect(ContinuousClock.now - signalled < .seconds(5))
        #expect(consumer.exitedCleanly, "\(consumer.termination)\n\(contents(log))")
        #expect(contents(log).contains("stopped before it was ready"), "\(contents(log))")
    }

    /// A producer address that answers but does not serve the snapshot will never work: say so and stop.
    @Test func aProducerAddressThatDoesNotServeTheSnapshotFailsClearly() async throws {
        let host = try TestVirtualHost("wrongproducer")
        defer { host.tearDown() }
        try FileManager.default.createDirectory(atPath: host.directory, withIntermediateDirectories: true)
        let port = try freePort()
        let log = host.directory + "/user-rpc.log"
        // Its own address: a consumer's gRPC server answers UNIMPLEMENTED for EntityAdmin.Snapshot.
        let consumer = try start(["user-rpc", "--amqp-url", host.url, "--listen", "127.0.0.1:\(port)",
                                  "--db", host.path("user-rpc"), "--producer", "127.0.0.1:\(port)"], log: log)
        defer { consumer.signal(SIGKILL) }
        try await eventually("user-rpc gave up", timeout: .seconds(30)) { !consumer.isRunning }
        let text = contents(log)
        #expect(!consumer.exitedCleanly, "\(text)")
        #expect(text.contains("does not serve EntityAdmin.Snapshot") && text.contains("--producer"), "\(text)")
        #expect(!text.contains("not available yet; retrying"), "an answer that will never change is not retried")
    }

    /// Issue 12.2: a rebuilt replica whose queue history was already acked, killed part-way
    /// through its snapshot, must load it again on the next start instead of serving a partial copy.
    @Test func anInterruptedBootstrapIsFinishedOnTheNextStart() async throws {
        let host = try TestVirtualHost("resume")
        defer { host.tearDown() }
        let source = try await seededProducerStore(host.path("producer"))
        let replica = try SQLiteReplicaStore(path: host.path("user-rpc"))
        _ = try await replica.beginBootstrap(instance: "killed", covering: [.user, .group], at: Date().addingTimeInterval(-600))
        for change in try await source.snapshot(of: .user, after: nil, limit: 10) {
            guard case .success(let validated) = ChangeCodec.validate(change, expected: .user) else {
                Issue.record("invalid seed change \(change)")
                return
            }
            _ = try await replica.apply(validated)
        }
        #expect(try await !storesMatch(replica, source))

        let logger = Broker.logger("resume")
        func configuration(_ store: String, producer: HostPort? = nil) -> ServiceConfiguration {
            ServiceConfiguration(amqpURL: host.url, listen: HostPort(host: "127.0.0.1", port: 0), database: host.path(store),
                                 producer: producer, instanceName: store)
        }
        let producer = ProducerService(configuration: configuration("producer"), logger: logger)
        let producerGroup = ServiceGroup(services: [producer], logger: logger)
        let producerRun = Task { try await producerGroup.run() }
        try await eventually("producer SERVING") { producer.health.isServing }
        let producerPort = try await producer.address.port()

        let consumer = ConsumerService(kind: .userRPC, configuration: configuration(
            "user-rpc", producer: HostPort(host: "127.0.0.1", port: producerPort)), logger: logger)
        let consumerGroup = ServiceGroup(services: [consumer], logger: logger)
        let consumerRun = Task { try await consumerGroup.run() }
        try await eventually("user-rpc SERVING") { consumer.health.isServing }
        let consumerPort = try await consumer.address.port()

        // Nothing can come through the queues: only the snapshot can fill the gap.
        try await eventually("every entity of the producer is in the replica", timeout: .seconds(10)) {
            try await storesMatch(replica, source)
        }
        #expect(try await syncStatus(port: consumerPort).bootstrap == .complete)
        let record = try #require(try await replica.bootstrapRecord())
        #expect(record.isCompleted && record.attempts == 2)
        #expect(record.marks[.user] == SnapshotMark(entities: 40, highestVersion: 2))

        await consumerGroup.triggerGracefulShutdown()
        try await consumerRun.value
        await producerGroup.triggerGracefulShutdown()
        try await producerRun.value
    }

    /// Issue 12.3: how the store came to hold what it holds is visible, and an empty store
    /// started without --producer says so in its log.
    @Test func theBootstrapStateIsReportedAndAnEmptyStoreWithoutProducerWarns() async throws {
        let host = try TestVirtualHost("bootstrapstate")
        defer { host.tearDown() }
        try FileManager.default.createDirectory(atPath: host.directory, withIntermediateDirectories: true)

        // Empty, no --producer: serves what the queues bring, and warns.
        let port = try freePort()
        let log = host.directory + "/empty.log"
        let empty = try start(["user-rpc", "--amqp-url", host.url, "--listen", "127.0.0.1:\(port)",
                               "--db", host.path("empty")], log: log)
        defer { empty.signal(SIGKILL) }
        try await eventually("user-rpc SERVING") {
            guard empty.isRunning else { throw HarnessError("user-rpc ended (\(empty.termination)):\n\(contents(log))") }
            return await healthStatus(port: port) == .serving
        }
        #expect(try await syncStatus(port: port).bootstrap == .queuesOnly)
        #expect(contents(log).contains("store is empty and no --producer was given"), "\(contents(log))")
        let (_, table) = try run(["ctl", "status", "--user-rpc", "127.0.0.1:\(port)", "--org-rpc", "127.0.0.1:\(try freePort())",
                                  "--producer", "127.0.0.1:\(try freePort())"])
        #expect(table.contains("bootstrap: from queues only"), "\(table)")
        let (_, json) = try run(["ctl", "status", "--json", "--user-rpc", "127.0.0.1:\(port)",
                                 "--org-rpc", "127.0.0.1:\(try freePort())", "--producer", "127.0.0.1:\(try freePort())"])
        #expect(json.contains("\"bootstrap\":\"BOOTSTRAP_STATE_QUEUES_ONLY\""), "\(json)")
        empty.signal(SIGTERM)

        // A load cut short, started again without --producer: incomplete, and it says what to do.
        let cut = try SQLiteReplicaStore(path: host.path("cut"))
        _ = try await cut.beginBootstrap(instance: "killed", covering: [.user, .group], at: Date().addingTimeInterval(-600))
        let cutPort = try freePort()
        let cutLog = host.directory + "/cut.log"
        let incomplete = try start(["user-rpc", "--amqp-url", host.url, "--listen", "127.0.0.1:\(cutPort)",
                                    "--db", host.path("cut")], log: cutLog)
        defer { incomplete.signal(SIGKILL) }
        try await eventually("user-rpc SERVING") {
            guard incomplete.isRunning else {
                throw HarnessError("user-rpc ended (\(incomplete.termination)):\n\(contents(cutLog))")
            }
            return await healthStatus(port: cutPort) == .serving
        }
        let status = try await syncStatus(port: cutPort)
        #expect(status.bootstrap == .incomplete && status.hasBootstrapStartedAt && !status.hasBootstrapCompletedAt)
        #expect(contents(cutLog).contains("snapshot load never completed"), "\(contents(cutLog))")
        let (_, cutTable) = try run(["ctl", "status", "--user-rpc", "127.0.0.1:\(cutPort)",
                                     "--org-rpc", "127.0.0.1:\(try freePort())", "--producer", "127.0.0.1:\(try freePort())"])
        #expect(cutTable.contains("bootstrap: INCOMPLETE"), "\(cutTable)")
        incomplete.signal(SIGTERM)
        try await eventually("both exited", timeout: .seconds(20)) { !empty.isRunning && !incomplete.isRunning }
        #expect(empty.exitedCleanly && incomplete.exitedCleanly)
    }
}
