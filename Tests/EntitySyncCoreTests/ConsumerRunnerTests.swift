import AMQPModel
import AMQPTesting
import EntitySyncCore
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import Logging
import Synchronization
import Testing

/// The consumer's rules against the in-memory broker and a real SQLite file: apply then ack,
/// stale skipped, poison to the dead-letter queue with its reason, transient failures retried
/// through the retry queue and dead-lettered past their attempts, deliveries lost with the
/// connection redelivered and absorbed by the version rule.
@Suite struct ConsumerRunnerTests {
    static let group = "consumer_user_rpc"
    static let queue = SyncTopology.queue(for: .user, group: group)
    static let topology = SyncTopology(routes: [.user: [group]])

    /// A runner over a fresh broker and store, with retries in milliseconds.
    struct Rig {
        let broker = InMemoryBroker()
        let directory: String
        let store: any ReplicaStore
        let runner: ConsumerRunner
        let task: Task<Void, any Error>

        init(store makeStore: (SQLiteReplicaStore) -> any ReplicaStore = { $0 },
             configure: (inout ConsumerRunner.Configuration) -> Void = { _ in },
             backlog: [EntityChange] = []) async throws {
            self.directory = try Fixtures.temporaryDirectory("runner")
            // Queued before the runner starts, so that it finds a backlog, as a catching-up group does.
            if !backlog.isEmpty {
                try await ConsumerRunnerTests.topology.prepare(forGroup: ConsumerRunnerTests.group, declare: true, on: self.broker)
                for change in backlog {
                    try await self.broker.publish(try ChangeCodec.message(for: change), exchange: SyncTopology.exchange(for: .user),
                                                  routingKey: "", mandatory: true)
                }
            }
            let sqlite = try SQLiteReplicaStore(path: "\(self.directory)/replica.sqlite")
            self.store = makeStore(sqlite)
            var configuration = ConsumerRunner.Configuration()
            configuration.prefetch = 8
            configuration.retryBackoff = Backoff(initial: .milliseconds(20), maximum: .milliseconds(80))
            configure(&configuration)
            self.runner = ConsumerRunner(group: ConsumerRunnerTests.group, topology: ConsumerRunnerTests.topology,
                                         broker: self.broker, store: self.store, configuration: configuration,
                                         logger: Logger(label: "test.runner"))
            let runner = self.runner
            self.task = Task { try await runner.run() }
            let broker = self.broker
            try await eventually("consumer subscribed") {
                (try? await broker.queueStatus(ConsumerRunnerTests.queue).consumerCount) == 1
            }
        }

        func publish(_ change: EntityChange) async throws {
            try await self.broker.publish(try ChangeCodec.message(for: change), exchange: SyncTopology.exchange(for: .user),
                                          routingKey: "", mandatory: true)
        }

        func publishRaw(_ body: [UInt8], contentType: String) async throws {
            try await self.broker.publish(OutgoingMessage(body: body, contentType: contentType),
                                          exchange: SyncTopology.exchange(for: .user), routingKey: "", mandatory: true)
        }

        /// Waits until the runner has handled `count` deliveries and holds none unsettled.
        func settled(handled count: Int) async throws {
            try await eventually("\(count) deliveries handled and settled") {
                self.runner.handled >= count && self.broker.unsettledCount(in: ConsumerRunnerTests.queue) == 0
            }
        }

        func stop() async throws {
            self.task.cancel()
            try await self.task.value
            try? FileManager.default.removeItem(atPath: self.directory)
        }
    }

    @Test func appliesAChangeAndAcksItAfterTheCommit() async throws {
        let rig = try await Rig()
        try await rig.publish(Fixtures.userChange("ada", version: 1))
        try await rig.settled(handled: 1)
        #expect(try await rig.store.user(id: "ada")?.version == 1)
        #expect(rig.broker.messages(in: Self.queue).isEmpty)
        try await rig.stop()
    }

    @Test func outOfOrderAndDuplicateDeliveriesEndAtTheNewestVersion() async throws {
        let rig = try await Rig()
        for version: UInt64 in [2, 1, 3, 3, 2] {
            try await rig.publish(Fixtures.userChange("ada", version: version, name: "v\(version)"))
        }
        try await rig.settled(handled: 5)
        let user = try await rig.store.user(id: "ada")
        #expect(user?.version == 3)
        #expect(user?.name == "v3")
        #expect(try await rig.store.statistics()[.user]?.stale == 3)
        try await rig.stop()
    }

    @Test func poisonGoesToTheDeadLetterQueueWithItsReasonAndIsNotRetried() async throws {
        let rig = try await Rig()
        try await rig.publishRaw(Array("not protobuf".utf8), contentType: "application/x-protobuf")
        try await rig.settled(handled: 1)
        let dead = rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue))
        #expect(dead.count == 1)
        let reason = dead.first?.properties.headers[ConsumerRunner.reasonHeader]?.stringValue ?? ""
        #expect(!reason.isEmpty)
        #expect(dead.first?.properties.headers[ConsumerRunner.sourceQueueHeader] == .string(Self.queue))
        #expect(rig.broker.messages(in: SyncTopology.retryQueue(forQueue: Self.queue)).isEmpty)
        #expect(rig.runner.handled == 1)
        try await rig.stop()
    }

    /// A backlog is applied in batches (one transaction each, no larger than the prefetch) and
    /// acked together; a duplicate and an older version inside a batch are stale, and a poison
    /// message among them goes to the dead-letter queue without holding up the rest.
    @Test func aBacklogIsAppliedInBatchesAndAckedTogether() async throws {
        var backlog = (1...30).map { Fixtures.userChange("u\($0)", version: 1) }
        backlog.insert(Fixtures.userChange("u3", version: 3), at: 5)
        backlog.insert(Fixtures.userChange("u3", version: 2), at: 6)
        let rig = try await Rig(store: { FlakyStore(wrapping: $0) }, backlog: backlog)
        let flaky = try #require(rig.store as? FlakyStore)
        try await rig.publishRaw(Array("not protobuf".utf8), contentType: "application/x-protobuf")
        try await rig.publish(Fixtures.userChange("u31", version: 1))
        try await rig.settled(handled: backlog.count + 2)
        for index in 1...31 { #expect(try await rig.store.user(id: "u\(index)") != nil) }
        #expect(try await rig.store.user(id: "u3")?.version == 3)
        let sizes = await flaky.batchSizes
        #expect(sizes.contains { $0 > 1 }, "a backlog of 32 was applied one change at a time: \(sizes)")
        #expect(sizes.allSatisfy { $0 <= 8 }, "a batch exceeded the prefetch of 8: \(sizes)")
        // Each change applied once: nothing fell back to one-by-one or was applied twice.
        for index in 1...31 { #expect(await flaky.attempts(for: "u\(index)") == (index == 3 ? 3 : 1)) }
        let statistics = try await rig.store.statistics()[.user]
        #expect(statistics?.applied == 32 && statistics?.stale == 1)
        #expect(rig.broker.messages(in: Self.queue).isEmpty)
        #expect(rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue)).count == 1)
        try await rig.stop()
    }

    /// A change that fails inside a batch fails the batch's transaction; the batch is then
    /// applied change by change, so the others are applied at once and only the failing one
    /// goes through the retry queue.
    @Test func aChangeFailingInABatchIsRetriedAloneAndTheRestApplied() async throws {
        let backlog = (1...20).map { Fixtures.userChange("u\($0)", version: 1) }
        let rig = try await Rig(store: { FlakyStore(wrapping: $0, failuresPerEntity: ["u7": 2]) }, backlog: backlog)
        let flaky = try #require(rig.store as? FlakyStore)
        try await eventually("all 20 applied") {
            var count = 0
            for index in 1...20 where try await rig.store.user(id: "u\(index)") != nil { count += 1 }
            return count == 20
        }
        #expect(await flaky.attempts(for: "u7") >= 3)
        for index in [1, 6, 8, 20] { #expect(await flaky.attempts(for: "u\(index)") <= 2) }
        #expect(rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue)).isEmpty)
        try await rig.settled(handled: 21)
        try await rig.stop()
    }

    @Test func aTransientFailureIsRetriedThroughTheRetryQueueThenApplied() async throws {
        let rig = try await Rig(store: { FlakyStore(wrapping: $0, failuresPerEntity: ["ada": 2]) })
        let flaky = try #require(rig.store as? FlakyStore)
        try await rig.publish(Fixtures.userChange("ada", version: 1))
        try await eventually("applied after two retries") {
            try await rig.store.user(id: "ada")?.version == 1
        }
        #expect(await flaky.attempts(for: "ada") == 3)
        #expect(rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue)).isEmpty)
        try await rig.stop()
    }

    /// A store that cannot be reached is an outage: the runner holds its deliveries unacked,
    /// sends nothing to the retry or dead-letter queues however long it lasts, says so, and
    /// applies everything once the store is back.
    @Test func aStoreOutagePausesWithoutAckingOrDeadLetteringAndResumes() async throws {
        final class Availability: Sendable {
            let changes = Mutex<[Bool]>([])
        }
        let availability = Availability()
        let rig = try await Rig(store: { FlakyStore(wrapping: $0) }, configure: { configuration in
            configuration.maxAttempts = 2
            configuration.storeCheckBackoff = Backoff(initial: .milliseconds(5), maximum: .milliseconds(10))
            configuration.storeAvailabilityChanged = { available in availability.changes.withLock { $0.append(available) } }
        })
        let flaky = try #require(rig.store as? FlakyStore)
        await flaky.set(down: true)
        for index in 1...5 { try await rig.publish(Fixtures.userChange("u\(index)", version: 1)) }
        // Far more checks than the retry limit allows attempts: an outage must not spend them.
        try await eventually("the paused runner checked the store 20 times") { await flaky.readsWhileDown >= 20 }
        #expect(availability.changes.withLock { $0 } == [false])
        #expect(rig.runner.handled == 0)
        #expect(rig.broker.unsettledCount(in: Self.queue) == 5)
        #expect(rig.broker.messages(in: SyncTopology.retryQueue(forQueue: Self.queue)).isEmpty)
        #expect(rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue)).isEmpty)

        await flaky.set(down: false)
        try await rig.settled(handled: 5)
        for index in 1...5 { #expect(try await rig.store.user(id: "u\(index)")?.version == 1) }
        #expect(availability.changes.withLock { $0 } == [false, true])
        #expect(rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue)).isEmpty)
        try await rig.stop()
    }

    /// A store that reads but cannot commit (a full disk, a read-only database) is an outage
    /// too: the runner pauses on its write probe instead of spending the changes' attempts
    /// and dead-lettering them, and applies them once writes commit again.
    @Test func aStoreThatReadsButCannotWriteIsAnOutageNotAFailureOfTheChanges() async throws {
        let rig = try await Rig(store: { FlakyStore(wrapping: $0) }, configure: { configuration in
            configuration.maxAttempts = 2
            configuration.storeCheckBackoff = Backoff(initial: .milliseconds(5), maximum: .milliseconds(10))
        })
        let flaky = try #require(rig.store as? FlakyStore)
        await flaky.set(readOnly: true)
        for index in 1...3 { try await rig.publish(Fixtures.userChange("u\(index)", version: 1)) }
        try await eventually("the paused runner probed the store 20 times") { await flaky.probesWhileUnwritable >= 20 }
        #expect(rig.runner.handled == 0)
        #expect(rig.broker.unsettledCount(in: Self.queue) == 3)
        #expect(rig.broker.messages(in: SyncTopology.retryQueue(forQueue: Self.queue)).isEmpty)
        #expect(rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue)).isEmpty)

        await flaky.set(readOnly: false)
        try await rig.settled(handled: 3)
        for index in 1...3 { #expect(try await rig.store.user(id: "u\(index)")?.version == 1) }
        #expect(rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue)).isEmpty)
        try await rig.stop()
    }

    /// Stopping during an outage must not wait for the store: the held deliveries go back to
    /// the queue unsettled.
    @Test func stoppingDuringAnOutageLeavesTheDeliveriesForTheBroker() async throws {
        let rig = try await Rig(store: { FlakyStore(wrapping: $0) }, configure: { configuration in
            configuration.storeCheckBackoff = Backoff(initial: .seconds(30), maximum: .seconds(30))
        })
        let flaky = try #require(rig.store as? FlakyStore)
        await flaky.set(down: true)
        try await rig.publish(Fixtures.userChange("ada", version: 1))
        try await eventually("paused on the store") { await flaky.readsWhileDown >= 1 }
        for index in 1...3 { try await rig.publish(Fixtures.userChange("u\(index)", version: 1)) }
        try await eventually("all four delivered") { rig.broker.unsettledCount(in: Self.queue) == 4 }
        try await rig.stop()
        // Unacked (none acked with a later `multiple`), so the connection's close (which the
        // service does next) hands them back.
        #expect(rig.broker.unsettledCount(in: Self.queue) == 4)
        rig.broker.dropConnection()
        #expect(try await rig.broker.queueStatus(Self.queue).messageCount == 4)
        #expect(rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue)).isEmpty)
    }

    @Test func aChangeFailingOnEveryAttemptIsDeadLetteredWithTheLastError() async throws {
        let rig = try await Rig(store: { FlakyStore(wrapping: $0, failuresPerEntity: ["ada": 100]) },
                                configure: { $0.maxAttempts = 3 })
        try await rig.publish(Fixtures.userChange("ada", version: 1))
        let deadLetterQueue = SyncTopology.deadLetterQueue(forQueue: Self.queue)
        try await eventually("dead-lettered after 3 attempts") {
            rig.broker.messages(in: deadLetterQueue).count == 1
        }
        let reason = rig.broker.messages(in: deadLetterQueue).first?.properties.headers[ConsumerRunner.reasonHeader]?.stringValue
        #expect(reason?.hasPrefix("failed 3 times") == true)
        #expect(try await rig.store.user(id: "ada") == nil)
        try await rig.stop()
    }

    @Test func poisonWhoseCopyCannotBePublishedIsRejectedToTheQueuesDeadLetterExchange() async throws {
        let rig = try await Rig()
        // The poison's copy to the dead-letter queue goes through the group's forward exchange.
        rig.broker.failNextPublishes([.refuse(AMQPError(.nacked, "simulated nack"))],
                                     toExchange: SyncTopology.forwardExchange(forGroup: Self.group))
        try await rig.publishRaw([0xFF], contentType: "application/x-protobuf")
        try await rig.settled(handled: 1)
        let dead = rig.broker.messages(in: SyncTopology.deadLetterQueue(forQueue: Self.queue))
        #expect(dead.count == 1)
        // The broker's own dead-lettering: no reason header of ours, the broker's x-death instead.
        #expect(dead.first?.properties.headers[ConsumerRunner.reasonHeader] == nil)
        #expect(dead.first?.properties.headers["x-first-death-reason"] == .string("rejected"))
        try await rig.stop()
    }

    @Test func deliveriesLostWithTheConnectionAreRedeliveredAndApplyOnce() async throws {
        let gate = Gate()
        let rig = try await Rig(store: { GatedStore(wrapping: $0, gate: gate) })
        for index in 1...5 { try await rig.publish(Fixtures.userChange("u\(index)", version: 1)) }
        // The first apply is held inside the store while the connection drops: its ack must fail
        // and the broker's redelivery must not apply anything twice.
        try await eventually("first apply waiting") { gate.waiting > 0 }
        rig.broker.dropConnection()
        gate.open()
        // The batch held in the store is applied (its acks refused); what was still buffered
        // from the lost channel is dropped once the redeliveries arrive. All five redelivered:
        // those the held batch applied are found stale, the rest applied now.
        try await eventually("all five applied, every handled delivery counted, nothing left to settle") {
            let statistics = try? await rig.store.statistics()[.user]
            return (try? await rig.store.versions(of: .user).count) == 5 && rig.runner.handled >= 6
                && rig.broker.unsettledCount(in: Self.queue) == 0 && rig.broker.messages(in: Self.queue).isEmpty
                && (statistics.map { $0.applied + $0.stale } ?? -1) == rig.runner.handled
        }
        #expect(try await rig.store.statistics()[.user]?.applied == 5)
        #expect(rig.runner.handled <= 10)
        try await rig.stop()
    }

    @Test func deadLettersAreListedInPlaceAndRedriveAppliesWhatItCan() async throws {
        let rig = try await Rig()
        let deadLetterQueue = SyncTopology.deadLetterQueue(forQueue: Self.queue)
        try await rig.publish(Fixtures.userChange("kept", version: 2))
        try await rig.publishRaw([0x01], contentType: "application/x-protobuf")
        try await rig.settled(handled: 2)
        // Straight into the dead-letter queue, as an earlier failure would have left them.
        for change in [Fixtures.userChange("fresh", version: 1), Fixtures.userChange("kept", version: 1)] {
            try await rig.broker.publish(try ChangeCodec.message(for: change),
                                         exchange: SyncTopology.forwardExchange(forGroup: Self.group),
                                         routingKey: deadLetterQueue, mandatory: true)
        }
        let listed = try await rig.runner.listDeadLetters(kinds: [.user], limit: 10)
        #expect(listed.total == 3)
        #expect(listed.letters.map(\.entityID) == [nil, "fresh", "kept"])
        #expect(listed.letters.first?.reason.contains("undecodable") == true)
        #expect(rig.broker.messages(in: deadLetterQueue).count == 3)

        let report = try await rig.runner.redriveDeadLetters(kinds: [.user], limit: nil)
        #expect(report.applied == 1)
        #expect(report.stale == 1)
        #expect(report.failed == 1)
        #expect(try await rig.store.user(id: "fresh")?.version == 1)
        #expect(try await rig.store.user(id: "kept")?.version == 2)
        let left = rig.broker.messages(in: deadLetterQueue)
        #expect(left.count == 1)
        #expect(left.first?.properties.headers[ConsumerRunner.reasonHeader]?.stringValue?.contains("undecodable") == true)
        try await rig.stop()
    }

    @Test func cancellingTheRunnerFinishesTheDeliveriesItHolds() async throws {
        let gate = Gate()
        let rig = try await Rig(store: { GatedStore(wrapping: $0, gate: gate) })
        try await rig.publish(Fixtures.userChange("ada", version: 1))
        try await eventually("apply waiting") { gate.waiting > 0 }
        rig.task.cancel()
        gate.open()
        try await rig.task.value
        #expect(try await rig.store.user(id: "ada")?.version == 1)
        #expect(rig.broker.unsettledCount(in: Self.queue) == 0)
        #expect(rig.broker.messages(in: Self.queue).isEmpty)
        try await rig.stop()
    }
}

/// Holds every store apply until opened.
final class Gate: Sendable {
    private struct State {
        var open = false
        var waiting = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    var waiting: Int { self.state.withLock { $0.waiting } }

    func pass() async {
        await withCheckedContinuation { continuation in
            let go = self.state.withLock { state -> Bool in
                if state.open { return true }
                state.waiting += 1
                state.waiters.append(continuation)
                return false
            }
            if go { continuation.resume() }
        }
    }

    func open() {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// A replica store whose applies wait at a gate.
final class GatedStore: ReplicaStore {
    private let wrapped: any ReplicaStore
    private let gate: Gate

    init(wrapping wrapped: any ReplicaStore, gate: Gate) {
        self.wrapped = wrapped
        self.gate = gate
    }

    func apply(_ change: ValidatedChange) async throws -> VersionRule.Decision {
        await self.gate.pass()
        return try await self.wrapped.apply(change)
    }

    func recordDeadLetter(_ kind: EntityKind) async throws { try await self.wrapped.recordDeadLetter(kind) }
    func user(id: String) async throws -> User? { try await self.wrapped.user(id: id) }
    func group(id: String) async throws -> Group? { try await self.wrapped.group(id: id) }
    func versions(of kind: EntityKind) async throws -> [String: EntityVersion] { try await self.wrapped.versions(of: kind) }
    func statistics() async throws -> [EntityKind: ReplicaStatistics] { try await self.wrapped.statistics() }
    func version(of kind: EntityKind, id: String) async throws -> EntityVersion? { try await self.wrapped.version(of: kind, id: id) }
    func listUsers(after: String?, limit: Int) async throws -> [User] { try await self.wrapped.listUsers(after: after, limit: limit) }
    func listGroups(after: String?, limit: Int) async throws -> [Group] { try await self.wrapped.listGroups(after: after, limit: limit) }
    func users(ids: [String]) async throws -> [User] { try await self.wrapped.users(ids: ids) }
    func groups(ofUser userID: String, after: String?, limit: Int) async throws -> [Group] {
        try await self.wrapped.groups(ofUser: userID, after: after, limit: limit)
    }
    func members(ofGroup groupID: String, after: String?, limit: Int) async throws -> [User] {
        try await self.wrapped.members(ofGroup: groupID, after: after, limit: limit)
    }
}
