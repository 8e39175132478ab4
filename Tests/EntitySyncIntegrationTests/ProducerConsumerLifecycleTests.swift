import AMQPClient
import EntitySyncCore
import EntitySyncSQLite
import EntitySyncTestSupport
import Testing

@Suite(.enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct ProducerConsumerLifecycleTests {
    /// Two producer processes on one store: the relay lease lets only one publish at a time, so
    /// no event is published twice and nothing is missed. Also when both were started with the
    /// same instance name (as two on one host get by default): before relay owners were made
    /// unique per process, both claimed under one name and published the same records.
    @Test(arguments: [("producer-a", "producer-b"), ("producer@host", "producer@host")])
    func twoProducersOnOneStorePublishEachEventOnce(names: (String, String)) async throws {
        let harness = try SyncHarness("two_producers")
        defer { harness.tearDown() }
        let consumer = try await harness.startConsumer(group: "consumer_user_rpc", instance: "a")
        let first = try await harness.startProducer(names.0)
        let second = try await harness.startProducer(names.1)
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

    /// A producer that stops gives up the relay lease, so the next one (a restart is a new owner)
    /// relays at once instead of after the lease (45 s by default). The relay stops by being
    /// cancelled, and the store refuses work in a cancelled task: the release must not be.
    @Test func aStoppedProducerHandsTheRelayOverAtOnce() async throws {
        let harness = try SyncHarness("handover")
        defer { harness.tearDown() }
        let first = try await harness.startProducer("first")
        _ = try await first.store.createUser(UserDraft(id: "before", name: "Before", email: "before@example.com"))
        try await first.outboxDrained()
        await first.stop()
        let next = try SQLiteSourceStore(path: harness.path("source"), producer: "next")
        _ = try await next.createUser(UserDraft(id: "after", name: "After", email: "after@example.com"))
        let claimed = try await next.claimOutbox(owner: OutboxRelay.uniqueOwner(instanceName: "next"), lease: .seconds(60), limit: 10)
        #expect(claimed.map(\.entityID) == ["after"], "the stopped producer still holds the lease")
    }

    /// A queue that exists with other arguments stops the producer before it publishes, with an
    /// error naming the queue, the argument and the way out that keeps the queue's messages.
    @Test func topologyMismatchStopsStartup() async throws {
        let harness = try SyncHarness("mismatch", topology: SyncTopology(queueType: .classic))
        defer { harness.tearDown() }
        let connection = try await harness.connect("operator")
        // An older deployment's queue: classic, without dead-lettering.
        try await connection.declare(QueueSpec(name: "exchange_user_consumer_user_rpc",
                                               arguments: QueueArguments(queueType: .classic)))
        do {
            _ = try await harness.startProducer()
            Issue.record("the producer started over a mismatching queue")
        } catch let error as SyncError {
            // Names the queue and the argument, and the way out that keeps the queue's messages.
            #expect(error.code == .configuration)
            #expect(error.message.contains("exchange_user_consumer_user_rpc"))
            #expect(error.message.contains("'x-dead-letter-exchange'"))
            #expect(error.message.contains("entity-sync topology migrate"))
        }
        await connection.close()
    }

    /// A consumer stopped in the middle of a stream finishes and acks what it holds; a restarted
    /// instance picks up the rest and the replica converges.
    @Test func gracefulStopAndRestartConverges() async throws {
        let harness = try SyncHarness("restart")
        defer { harness.tearDown() }
        let producer = try await harness.startProducer()
        let consumer = try await harness.startConsumer(group: "consumer_org_rpc", instance: "a")
        let making = Task { try await makeHistory(producer.store, users: 80) }
        try await eventually("consuming under way") { consumer.runner.handled >= 20 }
        try await consumer.stop()
        try await making.value
        try await producer.outboxDrained()
        let restarted = try await harness.startConsumer(group: "consumer_org_rpc", instance: "b")
        try await converge(restarted.store, with: producer.store)
        try await restarted.stop()
        await producer.stop()
    }
}
