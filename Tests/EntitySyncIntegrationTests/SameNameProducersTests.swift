import EntitySyncCore
import EntitySyncSQLite
import EntitySyncTestSupport
import Testing

@Suite(.enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct SameNameProducersTests {
    /// Two producers on one store started with the same instance name (as two on one host get
    /// by default): their relays still take turns, so no event is published twice. Before relay
    /// owners were made unique, both claimed under one name and published the same records.
    @Test func twoProducersWithOneNamePublishEachEventOnce() async throws {
        let harness = try SyncHarness("same_name_producers")
        defer { harness.tearDown() }
        let consumer = try await harness.startConsumer(group: "consumer_user_rpc", instance: "a")
        let first = try await harness.startProducer("producer@host")
        let second = try await harness.startProducer("producer@host")
        async let a: Void = makeHistory(first.store, users: 30, prefix: "a")
        async let b: Void = makeHistory(second.store, users: 30, prefix: "b")
        _ = try await (a, b)
        try await first.outboxDrained()
        try await converge(consumer.store, with: first.store)
        let statistics = try await consumer.store.statistics()
        #expect(statistics[.user]?.stale == 0 && statistics[.group]?.stale == 0, "an event was published twice")
        try await consumer.stop()
        await first.stop()
        await second.stop()
    }
}
