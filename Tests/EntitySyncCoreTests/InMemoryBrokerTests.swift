import AMQPModel
import AMQPTesting
import Testing

/// The in-memory broker keeps RabbitMQ's rules the sync core relies on; if it drifted, the fast
/// tests would pass against a broker nobody runs.
@Suite struct InMemoryBrokerTests {
    static func body(_ text: String) -> OutgoingMessage { OutgoingMessage(body: Array(text.utf8)) }
    static func text(_ delivery: Delivery) -> String { String(decoding: delivery.body, as: UTF8.self) }

    static func broker(queue: QueueSpec = QueueSpec(name: "q")) async throws -> InMemoryBroker {
        let broker = InMemoryBroker()
        try await broker.declare(ExchangeSpec(name: "fan", kind: .fanout))
        try await broker.declare(queue)
        try await broker.bind(BindingSpec(queue: queue.name, exchange: "fan"))
        return broker
    }

    static func publish(_ broker: InMemoryBroker, _ texts: String..., exchange: String = "fan") async throws {
        for text in texts { try await broker.publish(self.body(text), exchange: exchange, routingKey: "", mandatory: true) }
    }

    @Test func redeclaringWithOtherArgumentsFailsAsRabbitMQDoes() async throws {
        let broker = try await Self.broker()
        try await broker.declare(QueueSpec(name: "q"))
        await #expect(throws: AMQPError.self) {
            try await broker.declare(QueueSpec(name: "q", arguments: QueueArguments(queueType: .quorum)))
        }
        do {
            _ = try await broker.queueStatus("missing")
            Issue.record("a missing queue must be reported")
        } catch let error as AMQPError {
            #expect(error.code == .notFound)
        }
    }

    @Test func mandatoryPublishesWithNoQueueAreReturned() async throws {
        let broker = InMemoryBroker()
        try await broker.declare(ExchangeSpec(name: "empty", kind: .fanout))
        let results = await broker.publish([PublishItem(Self.body("a"), exchange: "empty"),
                                            PublishItem(Self.body("b"), exchange: "empty", mandatory: false),
                                            PublishItem(Self.body("c"), exchange: "nowhere")])
        #expect((try? results[0].get()) == nil)
        #expect((try? results[1].get()) != nil)
        if case .failure(let error) = results[0] { #expect(error.code == .unroutable) }
        if case .failure(let error) = results[2] { #expect(error.code == .notFound) } else { Issue.record("no exchange") }
    }

    @Test func prefetchBoundsUnsettledDeliveriesAndAcksMakeRoom() async throws {
        let broker = try await Self.broker()
        try await Self.publish(broker, "1", "2", "3")
        let consumer = try await broker.consume(queue: "q", prefetch: 2)
        var iterator = consumer.deliveries.makeAsyncIterator()
        let first = try #require(await iterator.next())
        let second = try #require(await iterator.next())
        #expect([Self.text(first), Self.text(second)] == ["1", "2"])
        #expect(broker.messages(in: "q").count == 1)
        try await first.ack()
        let third = try #require(await iterator.next())
        #expect(Self.text(third) == "3")
        try await third.ack(multiple: true)
        #expect(broker.unsettledCount(in: "q") == 0)
        await #expect(throws: AMQPError.self) { try await second.ack() }
        await consumer.cancel()
    }

    @Test func aRequeuedDeliveryReturnsToItsPlaceMarkedRedelivered() async throws {
        let broker = try await Self.broker()
        try await Self.publish(broker, "1", "2")
        let consumer = try await broker.consume(queue: "q", prefetch: 1)
        var iterator = consumer.deliveries.makeAsyncIterator()
        let first = try #require(await iterator.next())
        #expect(!first.redelivered)
        try await first.reject(requeue: true)
        let again = try #require(await iterator.next())
        #expect(Self.text(again) == "1")
        #expect(again.redelivered)
        try await again.ack()
        await consumer.cancel()
    }

    @Test func competingConsumersShareAQueueRoundRobin() async throws {
        let broker = try await Self.broker()
        let one = try await broker.consume(queue: "q", prefetch: 10)
        let two = try await broker.consume(queue: "q", prefetch: 10)
        try await Self.publish(broker, "1", "2", "3", "4")
        var first = one.deliveries.makeAsyncIterator()
        var second = two.deliveries.makeAsyncIterator()
        var seen: [String] = []
        for _ in 0..<2 {
            seen.append(Self.text(try #require(await first.next())))
            seen.append(Self.text(try #require(await second.next())))
        }
        #expect(seen == ["1", "2", "3", "4"])
        #expect(try await broker.queueStatus("q").consumerCount == 2)
    }

    @Test func rejectedAndExpiredMessagesAreDeadLetteredWithXDeath() async throws {
        let broker = InMemoryBroker()
        try await broker.declare(ExchangeSpec(name: "dlx", kind: .direct))
        try await broker.declare(QueueSpec(name: "dead"))
        try await broker.bind(BindingSpec(queue: "dead", exchange: "dlx", routingKey: "dead"))
        try await broker.declare(QueueSpec(name: "main", arguments: QueueArguments(deadLetterExchange: "dlx",
                                                                                  deadLetterRoutingKey: "dead")))
        try await broker.declare(QueueSpec(name: "wait", arguments: QueueArguments(deadLetterExchange: "",
                                                                                  deadLetterRoutingKey: "main")))
        var delayed = Self.body("later")
        delayed.properties.expiration = "30"
        try await broker.publish(delayed, exchange: "", routingKey: "wait", mandatory: true)
        // Expired in "wait", dead-lettered to "main" through the default exchange, TTL gone.
        let consumer = try await broker.consume(queue: "main", prefetch: 1)
        var iterator = consumer.deliveries.makeAsyncIterator()
        let moved = try #require(await iterator.next())
        #expect(Self.text(moved) == "later")
        #expect(moved.properties.expiration == nil)
        #expect(moved.properties.headers["x-first-death-reason"] == .string("expired"))
        try await moved.reject(requeue: false)
        let dead = broker.messages(in: "dead")
        #expect(dead.count == 1)
        guard case .array(let deaths) = dead.first?.properties.headers["x-death"], case .table(let last) = deaths.first else {
            Issue.record("no x-death")
            return
        }
        #expect(last["reason"] == .string("rejected"))
        #expect(last["queue"] == .string("main"))
        #expect(deaths.count == 2)
        await consumer.cancel()
    }

    @Test func aQuorumQueueDeadLettersPastItsDeliveryLimitAndCountsDeliveries() async throws {
        let broker = InMemoryBroker()
        try await broker.declare(QueueSpec(name: "dead"))
        try await broker.declare(QueueSpec(name: "q", arguments: QueueArguments(
            queueType: .quorum, deadLetterExchange: "", deadLetterRoutingKey: "dead", deliveryLimit: 2)))
        try await broker.publish(Self.body("x"), exchange: "", routingKey: "q", mandatory: true)
        let consumer = try await broker.consume(queue: "q", prefetch: 1)
        var iterator = consumer.deliveries.makeAsyncIterator()
        var counts: [Int?] = []
        for _ in 0..<3 {
            let delivery = try #require(await iterator.next())
            counts.append(delivery.deliveryCount)
            try await delivery.reject(requeue: true)
        }
        #expect(counts == [nil, 1, 2])
        #expect(broker.messages(in: "dead").count == 1)
        #expect(broker.messages(in: "q").isEmpty)
        await consumer.cancel()
    }

    @Test func aDroppedConnectionRequeuesAndRefusesLateSettlements() async throws {
        let broker = try await Self.broker()
        try await Self.publish(broker, "1")
        let consumer = try await broker.consume(queue: "q", prefetch: 5)
        var iterator = consumer.deliveries.makeAsyncIterator()
        let before = try #require(await iterator.next())
        broker.dropConnection()
        do {
            try await before.ack()
            Issue.record("an ack from before the loss must be refused")
        } catch let error as AMQPError {
            #expect(error.code == .deliveryExpired)
        }
        let after = try #require(await iterator.next())
        #expect(after.redelivered)
        try await after.ack()
        #expect(broker.messages(in: "q").isEmpty)
        await consumer.cancel()
    }

    @Test func deleteIfEmptyLeavesAQueueWithMessages() async throws {
        let broker = try await Self.broker()
        try await Self.publish(broker, "1")
        await #expect(throws: AMQPError.self) { try await broker.deleteQueue("q", ifEmpty: true) }
        #expect(try await broker.deleteQueue("q", ifEmpty: false) == 1)
        #expect(!broker.hasQueue("q"))
    }

    @Test func aMessageExpiresOnlyAtTheHeadOfItsQueue() async throws {
        let broker = InMemoryBroker()
        try await broker.declare(QueueSpec(name: "main"))
        try await broker.declare(QueueSpec(name: "wait", arguments: QueueArguments(deadLetterExchange: "",
                                                                                  deadLetterRoutingKey: "main")))
        var slow = Self.body("slow")
        slow.properties.expiration = "300"
        var quick = Self.body("quick")
        quick.properties.expiration = "1"
        try await broker.publish(slow, exchange: "", routingKey: "wait", mandatory: true)
        try await broker.publish(quick, exchange: "", routingKey: "wait", mandatory: true)
        let consumer = try await broker.consume(queue: "main", prefetch: 2)
        var iterator = consumer.deliveries.makeAsyncIterator()
        // The short TTL behind the long one waits for it, as on RabbitMQ.
        #expect(Self.text(try #require(await iterator.next())) == "slow")
        #expect(Self.text(try #require(await iterator.next())) == "quick")
        await consumer.cancel()
    }

    @Test func settlingTwiceClosesTheChannelAndReturnsWhatItHeld() async throws {
        let broker = try await Self.broker()
        try await Self.publish(broker, "1", "2")
        let consumer = try await broker.consume(queue: "q", prefetch: 2)
        var iterator = consumer.deliveries.makeAsyncIterator()
        let first = try #require(await iterator.next())
        let second = try #require(await iterator.next())
        try await first.ack()
        await #expect(throws: AMQPError.self) { try await first.ack() }
        await #expect(throws: AMQPError.self) { try await second.ack() }
        let again = try #require(await iterator.next())
        #expect(Self.text(again) == "2")
        #expect(again.redelivered)
        try await again.ack()
        await consumer.cancel()
    }
}
