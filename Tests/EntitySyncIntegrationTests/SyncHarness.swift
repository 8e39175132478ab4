import AMQPClient
import EntitySyncCore
import EntitySyncSQLite
import Foundation
import Logging
import Testing
import EntitySyncTestSupport

/// A private vhost for one test, with its own data folder; everything is removed at `tearDown`.
final class SyncHarness: Sendable {
    let host: TestVirtualHost
    let topology: SyncTopology

    init(_ name: String, topology: SyncTopology = SyncTopology()) throws {
        self.host = try TestVirtualHost(name)
        self.topology = topology
    }

    var vhost: String { self.host.name }

    func tearDown() { self.host.tearDown() }

    func connect(_ name: String) async throws -> AMQPConnection { try await self.host.connect(name) }

    func path(_ file: String) -> String { self.host.path(file) }

    /// A producer: source store, topology declared, outbox relay running (unless `relay` is false).
    func startProducer(_ name: String = "producer", relay: Bool = true) async throws -> Producer {
        let store = try SQLiteSourceStore(path: self.path("source"), producer: name)
        let connection = try await self.connect(name)
        var configuration = OutboxRelay.Configuration()
        configuration.backoff = Backoff(initial: .milliseconds(50), maximum: .seconds(1))
        let producer = SyncProducer(topology: self.topology, store: store, broker: connection, name: name,
                                    relayConfiguration: configuration, logger: Broker.logger(name))
        try await producer.declareTopology()
        let relayTask = relay ? Task { await producer.relay.run() } : nil
        return Producer(store: store, connection: connection, relay: relayTask)
    }

    /// One instance of a consumer group, sharing the group's store file with its siblings.
    func startConsumer(group: String, instance: String, store: (any ReplicaStore)? = nil,
                       configure: (inout ConsumerRunner.Configuration) -> Void = { _ in }) async throws -> Consumer {
        let replica = try store ?? SQLiteReplicaStore(path: self.path(group))
        let connection = try await self.connect("\(group)-\(instance)")
        var configuration = ConsumerRunner.Configuration()
        configuration.prefetch = 4
        configuration.retryBackoff = Backoff(initial: .milliseconds(200), maximum: .seconds(1))
        configure(&configuration)
        let runner = ConsumerRunner(group: group, topology: self.topology, broker: connection, store: replica,
                                    configuration: configuration, logger: Broker.logger("\(group)-\(instance)"))
        let task = Task { try await runner.run() }
        // Subscribed once the group's queues exist and have this consumer.
        try await eventually("\(group)/\(instance) subscribed") { try await connection.status().activeConsumers == self.topology.queues(forGroup: group).count }
        return Consumer(runner: runner, store: replica, connection: connection, task: task)
    }
}

struct Producer: Sendable {
    let store: SQLiteSourceStore
    let connection: AMQPConnection
    let relay: Task<Void, Never>?

    func stop() async {
        self.relay?.cancel()
        await self.relay?.value
        await self.connection.close()
    }

    func outboxDrained() async throws {
        try await eventually("outbox drained") { try await self.store.outboxCount() == 0 }
    }
}

struct Consumer: Sendable {
    let runner: ConsumerRunner
    let store: any ReplicaStore
    let connection: AMQPConnection
    let task: Task<Void, any Error>

    func stop() async throws {
        self.task.cancel()
        try await self.task.value
        await self.connection.close()
    }
}

/// Waits until every entity's version and tombstone in `replica` equals the producer's.
func converge(_ replica: any ReplicaStore, with source: any SourceStore, kinds: [EntityKind] = EntityKind.allCases,
              timeout: Duration = .seconds(60)) async throws {
    var difference = ""
    do {
        try await eventually("replica converged", timeout: timeout) {
            for kind in kinds {
                let expected = try await source.versions(of: kind)
                let actual = try await replica.versions(of: kind)
                if expected != actual {
                    let differing = Set(expected.keys).union(actual.keys).filter { expected[$0] != actual[$0] }.sorted()
                    difference = "\(kind): \(differing.prefix(5).map { "\($0) source=\(expected[$0]?.description ?? "-") replica=\(actual[$0]?.description ?? "-")" })"
                    return false
                }
            }
            return true
        }
    } catch {
        throw HarnessError("\(error); first differences: \(difference)")
    }
}

/// A realistic history: users created, updated and deleted, groups with changing membership.
func makeHistory(_ store: SQLiteSourceStore, users: Int = 30, prefix: String = "u") async throws {
    for index in 0..<users {
        _ = try await store.createUser(UserDraft(id: "\(prefix)\(index)", name: "User \(index)", email: "\(prefix)\(index)@example.com"))
    }
    _ = try await store.createGroup(GroupDraft(id: "\(prefix)-admins", name: "Admins", memberIDs: ["\(prefix)0", "\(prefix)1", "\(prefix)2"]))
    _ = try await store.createGroup(GroupDraft(id: "\(prefix)-everyone", name: "Everyone", memberIDs: (0..<users).map { "\(prefix)\($0)" }))
    for index in stride(from: 0, to: users, by: 3) {
        _ = try await store.updateUser(UserDraft(id: "\(prefix)\(index)", name: "Renamed \(index)", email: "\(prefix)\(index)@example.org",
                                                 status: .disabled), expectedVersion: nil)
    }
    _ = try await store.removeGroupMembers(groupID: "\(prefix)-admins", userIDs: ["\(prefix)2"], expectedVersion: nil)
    for index in stride(from: 1, to: users, by: 5) { _ = try await store.deleteUser(id: "\(prefix)\(index)", expectedVersion: nil) }
    _ = try await store.createGroup(GroupDraft(id: "\(prefix)-temp", name: "Temporary"))
    _ = try await store.deleteGroup(id: "\(prefix)-temp", expectedVersion: nil)
}
