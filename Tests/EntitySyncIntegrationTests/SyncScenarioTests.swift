import AMQPClient
import EntitySyncCore
import EntitySyncProto
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import SwiftProtobuf
import Testing

@Suite(.enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct SyncScenarioTests {
    /// The reference articles' scenario: the producer declares everything and publishes its
    /// history before any consumer group exists; groups started later still receive all of it.
    @Test func consumerGroupsStartedLaterReceiveTheWholeHistory() async throws {
        let harness = try SyncHarness("history")
        defer { harness.tearDown() }
        let producer = try await harness.startProducer()
        try await makeHistory(producer.store)
        try await producer.outboxDrained()

        let userRPC = try await harness.startConsumer(group: "consumer_user_rpc", instance: "a")
        let orgRPC = try await harness.startConsumer(group: "consumer_org_rpc", instance: "a")
        try await converge(userRPC.store, with: producer.store)
        try await converge(orgRPC.store, with: producer.store)
        let everyone = try await orgRPC.store.group(id: "u-everyone")
        #expect(everyone == (try await producer.store.group(id: "u-everyone")))
        #expect(try await userRPC.store.user(id: "u3") == (try await producer.store.user(id: "u3")))
        #expect(try await userRPC.store.user(id: "u1") == nil, "deleted users stay deleted")

        try await userRPC.stop()
        try await orgRPC.stop()
        await producer.stop()
    }

    /// Two competing instances of one group share its queues and its store; each receives part
    /// of the stream and together they converge to the producer's state, as does the other group.
    @Test func competingInstancesSplitTheStreamAndConverge() async throws {
        let harness = try SyncHarness("competing")
        defer { harness.tearDown() }
        let first = try await harness.startConsumer(group: "consumer_user_rpc", instance: "a")
        let second = try await harness.startConsumer(group: "consumer_user_rpc", instance: "b")
        let other = try await harness.startConsumer(group: "consumer_org_rpc", instance: "a")
        let producer = try await harness.startProducer()
        try await makeHistory(producer.store, users: 60)
        try await producer.outboxDrained()

        try await converge(first.store, with: producer.store)
        try await converge(other.store, with: producer.store)
        #expect(first.runner.handled > 0 && second.runner.handled > 0,
                "both instances must get part of the stream (a: \(first.runner.handled), b: \(second.runner.handled))")
        let statistics = try await first.store.statistics()
        let events = try await producer.store.versions(of: .user).values.reduce(0) { $0 + Int($1.version) }
            + (try await producer.store.versions(of: .group).values.reduce(0) { $0 + Int($1.version) })
        let applied = (statistics[.user]?.applied ?? 0) + (statistics[.group]?.applied ?? 0)
        #expect(applied <= events, "never more applies than versions produced")

        for consumer in [first, second, other] { try await consumer.stop() }
        await producer.stop()
    }

    /// Duplicates and stale versions injected straight into a group's queue leave the replica as it was.
    @Test func injectedDuplicatesAndStaleVersionsDoNotRegressTheReplica() async throws {
        let harness = try SyncHarness("duplicates")
        defer { harness.tearDown() }
        let producer = try await harness.startProducer()
        let consumer = try await harness.startConsumer(group: "consumer_org_rpc", instance: "a")
        _ = try await producer.store.createUser(UserDraft(id: "ada", name: "Ada v1", email: "ada@example.com"))
        _ = try await producer.store.updateUser(UserDraft(id: "ada", name: "Ada v2", email: "ada@example.com"), expectedVersion: 1)
        _ = try await producer.store.updateUser(UserDraft(id: "ada", name: "Ada v3", email: "ada@example.com"), expectedVersion: 2)
        try await producer.outboxDrained()
        try await converge(consumer.store, with: producer.store)
        let before = try await consumer.store.statistics()[.user]?.stale ?? 0

        // Old versions (out of order) and an exact duplicate of the newest, published directly.
        let injector = try await harness.connect("injector")
        let queue = SyncTopology.queue(for: .user, group: "consumer_org_rpc")
        for (version, name) in [(1, "Ada v1"), (2, "Ada v2"), (3, "Ada v3"), (3, "Ada v3"), (2, "stale")] {
            // Each with a message id of its own, as separate publishes by another client would have.
            let change = Fixtures.userChange("ada", version: UInt64(version), name: name,
                                             messageID: "inject:ada:\(version):\(UUID().uuidString)", producer: "injector")
            try await injector.publish(try ChangeCodec.message(for: change), exchange: "", routingKey: queue)
        }
        try await eventually("five injected events counted as stale") {
            (try await consumer.store.statistics()[.user]?.stale ?? 0) == before + 5
        }
        let ada = try await consumer.store.user(id: "ada")
        #expect(ada?.name == "Ada v3")
        #expect(ada?.version == 3)
        await injector.close()
        try await consumer.stop()
        await producer.stop()
    }

    /// A poison message goes to the dead-letter queue with its reason; the next event is applied.
    @Test func poisonMessagesAreDeadLetteredAndTheStreamContinues() async throws {
        let harness = try SyncHarness("poison")
        defer { harness.tearDown() }
        let producer = try await harness.startProducer()
        let consumer = try await harness.startConsumer(group: "consumer_user_rpc", instance: "a")
        let injector = try await harness.connect("injector")
        let poison: [OutgoingMessage] = [
            OutgoingMessage(body: Array("hello".utf8), contentType: "text/plain"),
            OutgoingMessage(body: [0xde, 0xad, 0xbe, 0xef], contentType: ChangeCodec.protobufContentType),
            OutgoingMessage(body: Array("{\"entityType\":\"ENTITY_TYPE_USER\"}".utf8), contentType: ChangeCodec.jsonContentType),
        ]
        for message in poison { try await injector.publish(message, exchange: SyncTopology.exchange(for: .user)) }
        _ = try await producer.store.createUser(UserDraft(id: "after", name: "After", email: "after@example.com"))
        try await producer.outboxDrained()
        try await converge(consumer.store, with: producer.store, kinds: [.user])

        let deadLetterQueue = SyncTopology.deadLetterQueue(forQueue: SyncTopology.queue(for: .user, group: "consumer_user_rpc"))
        try await eventually("three dead letters") { try await injector.queueStatus(deadLetterQueue).messageCount == 3 }
        let dead = try await injector.consume(queue: deadLetterQueue, prefetch: 10)
        var reasons: [String] = []
        for await delivery in dead.deliveries {
            reasons.append(delivery.properties.headers[ConsumerRunner.reasonHeader]?.stringValue ?? "(none)")
            try await delivery.ack()
            if reasons.count == 3 { break }
        }
        #expect(reasons.contains { $0.hasPrefix("unsupported-content-type") })
        #expect(reasons.contains { $0.hasPrefix("undecodable") })
        #expect(reasons.contains { $0.hasPrefix("invalid") })
        #expect(try await consumer.store.statistics()[.user]?.deadLettered == 3)
        await dead.cancel()
        await injector.close()
        try await consumer.stop()
        await producer.stop()
    }

    /// The producer dies after committing and before publishing (nothing relayed), and again after
    /// publishing but before removing the outbox rows: a restarted producer delivers every event,
    /// duplicates included, and the replica is exactly right.
    @Test func producerCrashBetweenCommitAndConfirmLosesNothing() async throws {
        let harness = try SyncHarness("crash")
        defer { harness.tearDown() }
        // Crash 1: committed, never published (the relay never ran).
        let crashed = try await harness.startProducer("producer-1", relay: false)
        try await makeHistory(crashed.store, users: 10)
        let committed = try await crashed.store.outboxCount()
        #expect(committed > 0)
        // Crash 2: half of the outbox published and confirmed, but the rows were not removed.
        let records = try await crashed.store.claimOutbox(owner: "producer-1", lease: .milliseconds(1), limit: committed / 2)
        let items = try records.map { PublishItem(try ChangeCodec.message(for: try EntityChange(serializedBytes: $0.payload)),
                                                  exchange: SyncTopology.exchange(for: $0.kind)) }
        for result in await crashed.connection.publish(items) { try result.get() }
        await crashed.connection.close()

        let consumer = try await harness.startConsumer(group: "consumer_org_rpc", instance: "a")
        let restarted = try await harness.startProducer("producer-2")
        try await restarted.outboxDrained()
        try await converge(consumer.store, with: restarted.store)
        let statistics = try await consumer.store.statistics()
        #expect((statistics[.user]?.stale ?? 0) + (statistics[.group]?.stale ?? 0) >= records.count,
                "the re-published half arrives twice and is skipped as stale")
        try await consumer.stop()
        await restarted.stop()
    }

    /// A store that fails transiently is retried after a delay (via the retry queue) until it
    /// works; one that keeps failing ends in the dead-letter queue with the last error.
    @Test func transientFailuresAreRetriedThenDeadLettered() async throws {
        let harness = try SyncHarness("retry")
        defer { harness.tearDown() }
        let producer = try await harness.startProducer()
        let replica = try SQLiteReplicaStore(path: harness.path("consumer_user_rpc"))
        let flaky = FlakyStore(wrapping: replica, failuresPerEntity: ["flaky": 2, "broken": 100])
        let consumer = try await harness.startConsumer(group: "consumer_user_rpc", instance: "a", store: flaky) {
            $0.maxAttempts = 3
        }
        _ = try await producer.store.createUser(UserDraft(id: "flaky", name: "Flaky", email: "flaky@example.com"))
        _ = try await producer.store.createUser(UserDraft(id: "broken", name: "Broken", email: "broken@example.com"))
        _ = try await producer.store.createUser(UserDraft(id: "fine", name: "Fine", email: "fine@example.com"))
        try await producer.outboxDrained()

        try await eventually("flaky applied after two failures") { try await replica.user(id: "flaky") != nil }
        #expect(try await replica.user(id: "fine") != nil)
        #expect(await flaky.attempts(for: "flaky") == 3)

        let queue = SyncTopology.queue(for: .user, group: "consumer_user_rpc")
        let inspector = try await harness.connect("inspector")
        try await eventually("broken dead-lettered after 3 attempts") {
            try await inspector.queueStatus(SyncTopology.deadLetterQueue(forQueue: queue)).messageCount == 1
        }
        #expect(await flaky.attempts(for: "broken") == 3)
        #expect(try await replica.user(id: "broken") == nil)
        let dead = try await inspector.consume(queue: SyncTopology.deadLetterQueue(forQueue: queue), prefetch: 1)
        var iterator = dead.deliveries.makeAsyncIterator()
        let letter = try #require(await iterator.next())
        #expect(letter.properties.headers[ConsumerRunner.reasonHeader]?.stringValue?.contains("failed 3 times") == true)
        #expect(letter.properties.headers[ConsumerRunner.attemptHeader]?.intValue == 2)
        try await letter.ack()
        await dead.cancel()
        await inspector.close()
        try await consumer.stop()
        await producer.stop()
    }
}
