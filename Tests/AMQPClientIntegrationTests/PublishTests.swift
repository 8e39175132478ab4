import AMQPClient
import EntitySyncTestSupport
import Testing

@Suite(.enabled(if: Broker.isConfigured, "needs ENTITY_SYNC_TEST_AMQP_URL (scripts/test sets it)"))
struct PublishTests {
    @Test func confirmedPublishesReachTheQueue() async throws {
        let connection = try await Broker.connect("publish")
        let scratch = Scratch("publish")
        try await scratch.declare(on: connection)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<200 {
                group.addTask { try await connection.publish(message("m\(index)"), exchange: scratch.exchange) }
            }
            try await group.waitForAll()
        }
        let status = try await connection.status()
        #expect(status.unconfirmedPublishes == 0)
        try await eventually("200 messages ready") { try await connection.queueStatus(scratch.queue).messageCount == 200 }
        await scratch.remove(on: connection)
        await connection.close()
    }

    @Test func mandatoryPublishWithNoQueueBoundIsReturned() async throws {
        let connection = try await Broker.connect("unroutable")
        let lonely = Broker.uniqueName("lonely")
        try await connection.declare(ExchangeSpec(name: lonely))
        do {
            try await connection.publish(message("nobody listens"), exchange: lonely)
            Issue.record("an unroutable mandatory publish was reported as delivered")
        } catch let error as AMQPError {
            #expect(error.code == .unroutable)
            #expect(error.message.contains("'\(lonely)'"))
        }
        // The returned publish must not disturb the next ones on the same channel.
        let scratch = Scratch("after_return")
        try await scratch.declare(on: connection)
        try await connection.publish(message("routed"), exchange: scratch.exchange)
        try await eventually("routed message ready") { try await connection.queueStatus(scratch.queue).messageCount == 1 }
        await scratch.remove(on: connection)
        try await connection.deleteExchange(lonely)
        await connection.close()
    }

    @Test func publishToMissingExchangeFailsAndThePublisherRecovers() async throws {
        let connection = try await Broker.connect("missing_exchange")
        let missing = Broker.uniqueName("missing")
        do {
            try await connection.publish(message("x"), exchange: missing)
            Issue.record("a publish to a missing exchange succeeded")
        } catch let error as AMQPError {
            #expect(error.code == .notFound)
            #expect(error.message.contains("'\(missing)'"))
        }
        let scratch = Scratch("after_not_found")
        try await scratch.declare(on: connection)
        try await connection.publish(message("fine"), exchange: scratch.exchange)
        await scratch.remove(on: connection)
        await connection.close()
    }

    @Test func propertiesAndHeadersArriveIntact() async throws {
        let connection = try await Broker.connect("properties")
        let scratch = Scratch("properties")
        try await scratch.declare(on: connection)
        let sent = OutgoingMessage(body: [0, 1, 2, 255], contentType: "application/x-protobuf", messageID: "event-1",
                                   headers: ["entity-type": "user", "version": 7], type: "user.upsert", appID: "producer")
        try await connection.publish(sent, exchange: scratch.exchange)
        let consumer = try await connection.consume(queue: scratch.queue, prefetch: 1)
        var iterator = consumer.deliveries.makeAsyncIterator()
        let received = try #require(await iterator.next())
        #expect(received.body == sent.body)
        #expect(received.properties.messageID == "event-1")
        #expect(received.properties.contentType == "application/x-protobuf")
        #expect(received.properties.deliveryMode == 2)
        #expect(received.properties.type == "user.upsert")
        #expect(received.properties.appID == "producer")
        #expect(received.properties.timestamp == sent.properties.timestamp)
        #expect(received.properties.headers["entity-type"] == "user")
        #expect(received.properties.headers["version"]?.intValue == 7)
        #expect(received.exchange == scratch.exchange)
        #expect(received.redelivered == false)
        try await received.ack()
        await consumer.cancel()
        await scratch.remove(on: connection)
        await connection.close()
    }

    @Test func batchPublishReportsEachOutcomeAndKeepsOrder() async throws {
        let connection = try await Broker.connect("batch")
        let scratch = Scratch("batch")
        try await scratch.declare(on: connection)
        let lonely = Broker.uniqueName("batch_lonely")
        try await connection.declare(ExchangeSpec(name: lonely))
        var batch = (0..<100).map { PublishItem(message("m\($0)"), exchange: scratch.exchange) }
        batch[50] = PublishItem(message("returned"), exchange: lonely)
        let results = await connection.publish(batch)
        #expect(results.count == 100)
        for (index, result) in results.enumerated() {
            switch result {
            case .success: #expect(index != 50)
            case .failure(let error): #expect(index == 50 && error.code == .unroutable, "\(index): \(error)")
            }
        }
        let consumer = try await connection.consume(queue: scratch.queue, prefetch: 200)
        var received: [String] = []
        for await delivery in consumer.deliveries {
            received.append(delivery.text)
            try await delivery.ack()
            if received.count == 99 { break }
        }
        #expect(received == (0..<100).filter { $0 != 50 }.map { "m\($0)" })
        await consumer.cancel()
        await scratch.remove(on: connection)
        try await connection.deleteExchange(lonely)
        await connection.close()
    }

    @Test func closeWaitsForOutstandingConfirms() async throws {
        let connection = try await Broker.connect("close_confirms")
        let scratch = Scratch("close_confirms")
        try await scratch.declare(on: connection)
        let confirmed = Collector<Int>()
        let publishers = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<300 {
                    group.addTask {
                        try await connection.publish(message("m\(index)"), exchange: scratch.exchange)
                        await confirmed.add(index)
                    }
                }
                try await group.waitForAll()
            }
        }
        try await eventually("publishing started") {
            let inFlight = try await connection.status().unconfirmedPublishes
            let done = await confirmed.count
            return inFlight > 0 || done > 0
        }
        let inspector = try await Broker.connect("close_confirms_inspector")
        await connection.close()
        // Everything accepted before close was sent and confirmed, or failed loudly: never lost silently.
        let outcome = await publishers.result
        let confirmedCount = await confirmed.count
        if case .failure(let error) = outcome {
            #expect((error as? AMQPError)?.code == .closed, "unexpected failure \(error)")
        } else {
            #expect(confirmedCount == 300)
        }
        try await eventually("confirmed messages in the queue") {
            try await inspector.queueStatus(scratch.queue).messageCount >= confirmedCount
        }
        await scratch.remove(on: inspector)
        await inspector.close()
    }
}
