import AMQPModel
import AMQPTesting
import EntitySyncCore
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import Logging
import Testing

/// The outbox relay against the in-memory broker and a real SQLite source store: records leave
/// the outbox only once confirmed, in commit order; a refused or unroutable publish stays and is
/// sent again; a confirm lost after the broker took the message makes a duplicate, never a gap.
@Suite struct OutboxRelayTests {
    static let queue = SyncTopology.queue(for: .user, group: "consumer_user_rpc")

    struct Rig {
        let broker = InMemoryBroker()
        let directory: String
        let store: SQLiteSourceStore
        let relay: OutboxRelay

        init(declare: Bool = true, batchSize: Int = 256, pipelineDepth: Int = 2) async throws {
            self.directory = try Fixtures.temporaryDirectory("relay")
            self.store = try SQLiteSourceStore(path: "\(self.directory)/source.sqlite", producer: "relay-test")
            var configuration = OutboxRelay.Configuration()
            configuration.backoff = Backoff(initial: .milliseconds(10), maximum: .milliseconds(50))
            configuration.idleCheck = .milliseconds(50)
            configuration.batchSize = batchSize
            configuration.pipelineDepth = pipelineDepth
            self.relay = OutboxRelay(store: self.store, broker: self.broker, owner: "relay-test",
                                     configuration: configuration, logger: Logger(label: "test.relay"))
            if declare {
                try await SyncTopology().prepare(forGroup: nil, declare: true, on: self.broker)
            }
        }

        func createUsers(_ ids: [String]) async throws {
            for id in ids { _ = try await self.store.createUser(UserDraft(id: id, name: "User \(id)", email: "\(id)@example.com")) }
        }

        /// Entity ids of the events waiting in `queue`, head first.
        func queued(_ queue: String = OutboxRelayTests.queue) throws -> [String] {
            try self.broker.messages(in: queue).map { message in
                try ChangeCodec.decode(body: message.body, contentType: message.properties.contentType, expected: .user).get().entityID
            }
        }

        func run(until condition: @escaping @Sendable () async throws -> Bool) async throws {
            let relay = self.relay
            let task = Task { await relay.run() }
            defer { task.cancel() }
            try await eventually("relay done", condition)
            task.cancel()
            await task.value
        }

        func tearDown() { try? FileManager.default.removeItem(atPath: self.directory) }
    }

    @Test func publishesInCommitOrderAndEmptiesTheOutbox() async throws {
        let rig = try await Rig()
        let ids = (1...20).map { "u\($0)" }
        try await rig.createUsers(ids)
        try await rig.run { try await rig.store.outboxCount() == 0 }
        #expect(try rig.queued() == ids)
        #expect(try rig.queued(SyncTopology.queue(for: .user, group: "consumer_org_rpc")) == ids)
        #expect(rig.relay.statistics.confirmed == 20)
        rig.tearDown()
    }

    @Test func pipelinedBatchesGoOutInCommitOrder() async throws {
        let rig = try await Rig(batchSize: 3, pipelineDepth: 3)
        let ids = (1...20).map { "u\($0)" }
        try await rig.createUsers(ids)
        try await rig.run { try await rig.store.outboxCount() == 0 }
        #expect(try rig.queued() == ids)
        #expect(rig.relay.statistics.confirmed == 20)
        rig.tearDown()
    }

    @Test func aFailedBatchAheadOfOthersInFlightIsSentAgainAfterThem() async throws {
        let rig = try await Rig(batchSize: 4, pipelineDepth: 3)
        let ids = (1...30).map { "u\($0)" }
        try await rig.createUsers(ids)
        // The first batch's first two publishes are refused while the next two batches are
        // already with the broker.
        rig.broker.failNextPublishes([.refuse(AMQPError(.nacked, "simulated nack")), .refuse(AMQPError(.nacked, "simulated nack"))])
        try await rig.run { try await rig.store.outboxCount() == 0 }
        let queued = try rig.queued()
        // Every change exactly once: none lost, none doubled.
        #expect(queued.sorted() == ids.sorted())
        // The refused ones went out again after the batches that were in flight behind them.
        let first = try #require(queued.firstIndex(of: "u1"))
        let behind = try #require(queued.firstIndex(of: "u12"))
        #expect(first > behind)
        #expect(rig.relay.statistics.retried == 2)
        rig.tearDown()
    }

    @Test func aRefusedPublishStaysInTheOutboxAndIsSentAgain() async throws {
        let rig = try await Rig()
        rig.broker.failNextPublishes([.refuse(AMQPError(.nacked, "simulated nack"))])
        try await rig.createUsers(["ada"])
        try await rig.run { try await rig.store.outboxCount() == 0 }
        #expect(try rig.queued() == ["ada"])
        #expect(rig.relay.statistics.retried == 1)
        rig.tearDown()
    }

    @Test func aConfirmLostAfterDeliveryMakesADuplicateNotAGap() async throws {
        let rig = try await Rig()
        rig.broker.failNextPublishes([.deliverThenFail(AMQPError(.connectionLost, "simulated connection loss"))])
        try await rig.createUsers(["ada"])
        try await rig.run { try await rig.store.outboxCount() == 0 }
        #expect(try rig.queued() == ["ada", "ada"])
        rig.tearDown()
    }

    @Test func anUnroutableEventWaitsUntilItsQueueExists() async throws {
        let rig = try await Rig(declare: false)
        try await rig.broker.declare(ExchangeSpec(name: SyncTopology.exchange(for: .user), kind: .fanout))
        try await rig.createUsers(["ada"])
        let relay = rig.relay
        let task = Task { await relay.run() }
        try await eventually("returned at least twice") { relay.statistics.returned >= 2 }
        #expect(try await rig.store.outboxCount() == 1)
        try await rig.broker.declare(QueueSpec(name: "late"))
        try await rig.broker.bind(BindingSpec(queue: "late", exchange: SyncTopology.exchange(for: .user)))
        try await eventually("delivered once routable") { try await rig.store.outboxCount() == 0 }
        task.cancel()
        await task.value
        #expect(try rig.queued("late") == ["ada"])
        rig.tearDown()
    }
}
