import AMQPClient
import EntitySyncTestSupport
import Testing

/// Runs `handler` for every delivery of `consumer` until the stream ends.
func handle(_ consumer: AMQPConsumer, _ handler: @escaping @Sendable (Delivery) async throws -> Void) -> Task<Void, Never> {
    Task {
        for await delivery in consumer.deliveries {
            do { try await handler(delivery) } catch { Issue.record("handler failed: \(error)") }
        }
    }
}

actor Gate {
    private(set) var isOpen = false
    func open() { self.isOpen = true }
}

@Suite(.enabled(if: Broker.isConfigured, "needs ENTITY_SYNC_TEST_AMQP_URL (scripts/test sets it)"))
struct ConsumeTests {
    @Test func ackRejectAndRequeue() async throws {
        let connection = try await Broker.connect("ack_reject")
        let scratch = Scratch("ack_reject")
        try await scratch.declare(on: connection)
        for text in ["ack-me", "requeue-me", "drop-me"] {
            try await connection.publish(message(text), exchange: scratch.exchange)
        }
        let seen = Collector<String>()
        let consumer = try await connection.consume(queue: scratch.queue, prefetch: 10)
        let task = handle(consumer) { delivery in
            await seen.add("\(delivery.text)\(delivery.redelivered ? "+redelivered" : "")")
            switch (delivery.text, delivery.redelivered) {
            case ("requeue-me", false): try await delivery.reject(requeue: true)
            case ("drop-me", _): try await delivery.reject(requeue: false)
            default: try await delivery.ack()
            }
        }
        try await eventually("the requeued message comes back marked redelivered") {
            await seen.set.contains("requeue-me+redelivered")
        }
        await consumer.cancel()
        await task.value
        #expect(await seen.set == ["ack-me", "requeue-me", "requeue-me+redelivered", "drop-me"])
        try await eventually("queue empty once settled") { try await connection.queueStatus(scratch.queue).messageCount == 0 }
        await scratch.remove(on: connection)
        await connection.close()
    }

    @Test func prefetchIsHonoured() async throws {
        let connection = try await Broker.connect("prefetch")
        let scratch = Scratch("prefetch")
        try await scratch.declare(on: connection)
        for index in 0..<10 { try await connection.publish(message("m\(index)"), exchange: scratch.exchange) }
        let held = Collector<String>()
        let consumer = try await connection.consume(queue: scratch.queue, prefetch: 3)
        var iterator = consumer.deliveries.makeAsyncIterator()
        var unsettled: [Delivery] = []
        for _ in 0..<3 {
            let delivery = try #require(await iterator.next())
            unsettled.append(delivery)
            await held.add(delivery.text)
        }
        // With 3 unacknowledged the broker must hold the other 7 back as ready.
        try await eventually("7 ready while 3 are unacknowledged") {
            try await connection.queueStatus(scratch.queue).messageCount == 7
        }
        try await unsettled.removeFirst().ack()
        let fourth = try #require(await iterator.next())
        #expect(!(await held.set).contains(fourth.text))
        try await eventually("6 ready after one ack") { try await connection.queueStatus(scratch.queue).messageCount == 6 }
        for delivery in unsettled + [fourth] { try await delivery.ack() }
        await consumer.cancel()
        // Deliveries that arrived before the cancel took effect are still ours to settle.
        while let late = await iterator.next() { try await late.reject(requeue: true) }
        await scratch.remove(on: connection)
        await connection.close()
    }

    @Test func poisonMessagePastDeliveryLimitLandsInDeadLetterQueue() async throws {
        let connection = try await Broker.connect("delivery_limit")
        let scratch = Scratch("delivery_limit")
        let deadLetters = ExchangeSpec(name: scratch.exchange + "_dlx")
        let deadLetterQueue = scratch.queue + ".dlq"
        try await connection.declare(deadLetters)
        try await connection.declare(QueueSpec(name: deadLetterQueue, arguments: QueueArguments(queueType: .quorum)))
        try await connection.bind(BindingSpec(queue: deadLetterQueue, exchange: deadLetters.name))
        try await scratch.declare(on: connection, arguments: QueueArguments(
            queueType: .quorum, deadLetterExchange: deadLetters.name, deliveryLimit: 2,
            deadLetterStrategy: .atMostOnce))
        try await connection.publish(message("poison"), exchange: scratch.exchange)
        try await connection.publish(message("fine"), exchange: scratch.exchange)

        let counts = Collector<Int>()
        let applied = Collector<String>()
        let consumer = try await connection.consume(queue: scratch.queue, prefetch: 5)
        let task = handle(consumer) { delivery in
            if delivery.text == "poison" {
                await counts.add(delivery.deliveryCount ?? 0)
                try await delivery.reject(requeue: true)
            } else {
                await applied.add(delivery.text)
                try await delivery.ack()
            }
        }
        try await eventually("the poison message is dead-lettered") {
            try await connection.queueStatus(deadLetterQueue).messageCount == 1
        }
        #expect(await applied.items == ["fine"])
        #expect(await counts.count >= 2)
        #expect((await counts.items.max() ?? 0) >= 1, "redeliveries must carry x-delivery-count")
        await consumer.cancel()
        await task.value

        let dlqConsumer = try await connection.consume(queue: deadLetterQueue, prefetch: 1)
        var iterator = dlqConsumer.deliveries.makeAsyncIterator()
        let dead = try #require(await iterator.next())
        #expect(dead.text == "poison")
        #expect(dead.properties.headers["x-death"] != nil || dead.properties.headers["x-first-death-reason"] != nil)
        try await dead.ack()
        await dlqConsumer.cancel()
        _ = try await connection.deleteQueue(deadLetterQueue)
        try await connection.deleteExchange(deadLetters.name)
        await scratch.remove(on: connection)
        await connection.close()
    }

    @Test func consumerCancelledByTheBrokerResubscribes() async throws {
        let connection = try await Broker.connect("broker_cancel")
        let operator_ = try await Broker.connect("broker_cancel_operator")
        let scratch = Scratch("broker_cancel")
        try await scratch.declare(on: connection)
        let received = Collector<String>()
        let consumer = try await connection.consume(queue: scratch.queue, prefetch: 5)
        let task = handle(consumer) { delivery in
            await received.add(delivery.text)
            try await delivery.ack()
        }
        // Deleting the queue cancels the consumer on the broker side.
        try await operator_.deleteQueue(scratch.queue)
        // The consumer's connection declared the queue, so it declares it again and re-subscribes.
        try await eventually("queue re-declared with a consumer") {
            (try? await operator_.queueStatus(scratch.queue).consumerCount) == 1
        }
        try await operator_.publish(message("after-cancel"), exchange: scratch.exchange)
        try await eventually("the re-subscribed consumer receives") { await received.set.contains("after-cancel") }
        await consumer.cancel()
        await task.value
        await scratch.remove(on: operator_)
        await operator_.close()
        await connection.close()
    }

    @Test func closeLetsInFlightHandlersAck() async throws {
        let connection = try await Broker.connect("graceful_close")
        let inspector = try await Broker.connect("graceful_close_inspector")
        let scratch = Scratch("graceful_close")
        try await scratch.declare(on: connection)
        for index in 0..<5 { try await connection.publish(message("m\(index)"), exchange: scratch.exchange) }
        let gate = Gate()
        let received = Collector<String>()
        let acked = Collector<String>()
        let consumer = try await connection.consume(queue: scratch.queue, prefetch: 5)
        // Handlers run concurrently, so all five are in flight when close starts.
        let task = Task {
            await withTaskGroup(of: Void.self) { group in
                for await delivery in consumer.deliveries {
                    group.addTask {
                        await received.add(delivery.text)
                        do {
                            try await eventually("handler released") { await gate.isOpen }
                            try await delivery.ack()
                            await acked.add(delivery.text)
                        } catch {
                            Issue.record("in-flight delivery could not be acked: \(error)")
                        }
                    }
                }
            }
        }
        try await eventually("first delivery in the handler") { await received.count >= 1 }
        let closed = Gate()
        let closing = Task {
            await connection.close(drainTimeout: .seconds(20))
            await closed.open()
        }
        try await eventually("all five received") { await received.count == 5 }
        #expect(await closed.isOpen == false, "close must wait for in-flight deliveries")
        await gate.open()
        await closing.value
        await task.value
        #expect(await acked.count == 5)
        #expect(try await inspector.queueStatus(scratch.queue).messageCount == 0, "acked messages must not be requeued")
        await scratch.remove(on: inspector)
        await inspector.close()
    }
}
