import AMQPClient
import EntitySyncTestSupport
import Testing

/// Consumer channels are a bounded resource of a connection (channel_max): they must come back
/// when a consumer ends, whichever way it ends.
@Suite(.enabled(if: Broker.isConfigured, "needs ENTITY_SYNC_TEST_AMQP_URL (scripts/test sets it)"))
struct ConsumerChannelTests {
    /// Issue 12 item 8: ids and channels only grew, capped at 2,000 per connection, so a
    /// long-running service failed its ~2,000th dead-letter listing until restarted.
    @Test(.timeLimit(.minutes(2))) func channelsOfCancelledConsumersAreReused() async throws {
        let connection = try await Broker.connect("channel_reuse")
        let empty = Scratch("channel_reuse")
        try await empty.declare(on: connection)
        let probe = Scratch("channel_probe")
        try await probe.declare(on: connection)
        try await connection.publish(message("one"), exchange: probe.exchange)
        // Well past channel_max (2047): only reuse makes this possible.
        for round in 0..<2_300 {
            // Every 500 rounds, a consumer must still work: it gets the message and hands it back
            // once cancelled (handed back before, it would come straight back to it).
            let queue = round % 500 == 0 ? probe.queue : empty.queue
            let consumer: AMQPConsumer
            do {
                consumer = try await connection.consume(queue: queue, prefetch: 1)
            } catch {
                Issue.record("consumer \(round) could not start: \(error)")
                break
            }
            if queue == probe.queue {
                var iterator = consumer.deliveries.makeAsyncIterator()
                let delivery = try #require(await iterator.next())
                #expect(delivery.text == "one")
                await consumer.cancel()
                try await delivery.reject(requeue: true)
            } else {
                await consumer.cancel()
            }
        }
        try await eventually("no consumer left on the queues") {
            let emptyConsumers = try await connection.queueStatus(empty.queue).consumerCount
            let probeConsumers = try await connection.queueStatus(probe.queue).consumerCount
            return emptyConsumers == 0 && probeConsumers == 0
        }
        #expect(try await connection.status().activeConsumers == 0)
        await empty.remove(on: connection)
        await probe.remove(on: connection)
        await connection.close()
    }

    /// Issue 12 item 7: a reader that stops iterating (its task cancelled) used to leave its
    /// consumer subscribed, every new delivery rejected and redelivered in a tight loop, and
    /// the deliveries it had been given pinned for good.
    @Test(.timeLimit(.minutes(1))) func aConsumerWhoseReaderIsCancelledGivesEverythingBack() async throws {
        let connection = try await Broker.connect("abandon")
        let scratch = Scratch("abandon")
        try await scratch.declare(on: connection)
        for index in 0..<10 { try await connection.publish(message("m\(index)"), exchange: scratch.exchange) }
        let consumer = try await connection.consume(queue: scratch.queue, prefetch: 5)
        let received = Collector<String>()
        let reader = Task {
            for await delivery in consumer.deliveries {
                await received.add(delivery.text)
                // Never settles: holds what it got, like a caller that gave up half-way.
            }
        }
        try await eventually("the reader holds its prefetch") { await received.count == 5 }
        reader.cancel()
        _ = await reader.value
        try await eventually("the abandoned consumer is gone and every message is back", timeout: .seconds(10)) {
            let status = try await connection.queueStatus(scratch.queue)
            return status.consumerCount == 0 && status.messageCount == 10
        }
        // And it stays so: nothing is redelivered in a loop.
        try await Task.sleep(for: .milliseconds(300))
        let status = try await connection.queueStatus(scratch.queue)
        #expect(status.consumerCount == 0 && status.messageCount == 10)
        await scratch.remove(on: connection)
        await connection.close()
    }
}
