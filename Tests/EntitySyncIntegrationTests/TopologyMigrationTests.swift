import AMQPClient
import EntitySyncCore
import EntitySyncTestSupport
import Foundation
import Testing

/// Queue arguments in force on the broker (not only what was sent), and the move of a
/// deployment declared by an earlier version to them without losing a message.
@Suite(.enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct TopologyMigrationTests {
    /// `rabbitmqctl list_queues name arguments` of a vhost: queue → argument → value as text.
    static func argumentsInForce(_ vhost: String) throws -> [String: [String: String]] {
        let output = try Broker.ctl("list_queues", "-q", "-p", vhost, "name", "arguments", "--formatter", "json")
        guard let start = output.firstIndex(of: "["),
              let rows = try JSONSerialization.jsonObject(with: Data(output[start...].utf8)) as? [[String: Any]] else {
            throw HarnessError("unexpected list_queues output: \(output)")
        }
        var result: [String: [String: String]] = [:]
        for row in rows {
            guard let name = row["name"] as? String, let arguments = row["arguments"] as? [[Any]] else { continue }
            result[name] = Dictionary(arguments.compactMap { triple in
                guard triple.count == 3, let key = triple[0] as? String else { return nil }
                return (key, "\(triple[2])")
            }, uniquingKeysWith: { first, _ in first })
        }
        return result
    }

    /// The declarations of EntitySync before issue 12: at-most-once moves, no DLQ delivery limit.
    static func oldDeclarations(_ topology: SyncTopology) -> SyncTopology.Declarations {
        var declarations = topology.declarations(forGroup: nil)
        declarations.queues = declarations.queues.map { spec in
            var old = spec
            if spec.name.hasSuffix(".retry") {
                old.arguments = QueueArguments(queueType: .classic, deadLetterExchange: "",
                                               deadLetterRoutingKey: String(spec.name.dropLast(".retry".count)))
            } else if spec.name.hasSuffix(".dlq") {
                old.arguments = QueueArguments(queueType: .quorum)
            } else {
                old.arguments = QueueArguments(queueType: .quorum, deadLetterExchange: SyncTopology.deadLetterExchange,
                                               deadLetterRoutingKey: SyncTopology.deadLetterQueue(forQueue: spec.name),
                                               deliveryLimit: 5)
            }
            return old
        }
        return declarations
    }

    /// Issue 12 items 11 and 12: the broker must run main and retry queues with at-least-once
    /// dead-lettering (which it silently drops without reject-publish overflow), and DLQs with a
    /// delivery limit that listing can never reach.
    @Test func declaredQueuesMoveMessagesAtLeastOnceAndKeepDeadLetters() async throws {
        let harness = try SyncHarness("args")
        defer { harness.tearDown() }
        let connection = try await harness.connect("declare")
        try await harness.topology.declarations(forGroup: nil).declare(on: connection)
        await connection.close()
        let inForce = try Self.argumentsInForce(harness.vhost)
        for group in harness.topology.groups {
            for (_, queue) in harness.topology.queues(forGroup: group) {
                for moving in [queue, SyncTopology.retryQueue(forQueue: queue)] {
                    let arguments = inForce[moving] ?? [:]
                    #expect(arguments["x-queue-type"] == "quorum", "\(moving): \(arguments)")
                    #expect(arguments["x-dead-letter-strategy"] == "at-least-once", "\(moving): \(arguments)")
                    #expect(arguments["x-overflow"] == "reject-publish", "\(moving): \(arguments)")
                }
                let dlq = inForce[SyncTopology.deadLetterQueue(forQueue: queue)] ?? [:]
                #expect(dlq["x-delivery-limit"] == "\(SyncTopology.deadLetterQueueDeliveryLimit)", "\(dlq)")
            }
        }
    }

    /// A deployment declared with the old arguments: the producer refuses to start with a
    /// message that names the fix, and `TopologyMigration` brings every queue over with its
    /// messages, in order, and is a no-op when run again.
    @Test func migrationKeepsEveryMessageInOrder() async throws {
        let harness = try SyncHarness("migrate")
        defer { harness.tearDown() }
        let connection = try await harness.connect("operator")
        try await Self.oldDeclarations(harness.topology).declare(on: connection)
        let main = SyncTopology.queue(for: .user, group: "consumer_user_rpc")
        let retry = SyncTopology.retryQueue(forQueue: main)
        let dlq = SyncTopology.deadLetterQueue(forQueue: main)
        for index in 0..<20 {
            try await connection.publish(Self.message("change-\(index)"), exchange: SyncTopology.exchange(for: .user))
        }
        var waiting = Self.message("retry-later")
        waiting.properties.expiration = "3600000"
        try await connection.publish(waiting, exchange: "", routingKey: retry)
        for index in 0..<3 { try await connection.publish(Self.message("dead-\(index)"), exchange: "", routingKey: dlq) }

        // Today's declarations meet the old queues: refused, with the way out named.
        await #expect {
            try await harness.topology.prepare(forGroup: nil, declare: true, on: connection)
        } throws: { error in
            "\(error)".contains("entity-sync topology migrate") && "\(error)".contains("x-")
        }

        let migration = TopologyMigration(topology: harness.topology, broker: connection, logger: Broker.logger("migrate"))
        let outcomes = try await migration.run()
        #expect(outcomes.count == harness.topology.declarations(forGroup: nil).queues.count)
        #expect(outcomes.allSatisfy { $0.outcome != .upToDate }, "every old queue is migrated: \(outcomes)")
        // The waiting retry is moved with the queue it retries into, to be retried at once.
        #expect(outcomes.first { $0.queue == main }?.outcome == .migrated(moved: 21))

        let inForce = try Self.argumentsInForce(harness.vhost)
        #expect(inForce[main]?["x-dead-letter-strategy"] == "at-least-once")
        #expect(inForce[retry]?["x-queue-type"] == "quorum")
        #expect(inForce[dlq]?["x-delivery-limit"] == "\(SyncTopology.deadLetterQueueDeliveryLimit)")
        #expect(inForce.keys.allSatisfy { !$0.hasSuffix(".migrating") }, "no temporary queue is left: \(inForce.keys)")

        #expect(try await connection.queueStatus(retry).messageCount == 0)
        #expect(try await connection.queueStatus(dlq).messageCount == 3)
        #expect(try await Self.texts(of: main, on: connection, count: 21) == ["retry-later"] + (0..<20).map { "change-\($0)" })
        // The other group's queue got the same changes through the fanout, and kept them too.
        #expect(try await connection.queueStatus(SyncTopology.queue(for: .user, group: "consumer_org_rpc")).messageCount == 20)

        // Bindings are back: a new change reaches the migrated queue.
        try await connection.publish(Self.message("after"), exchange: SyncTopology.exchange(for: .user))
        try await eventually("the migrated queue is bound again") { try await connection.queueStatus(main).messageCount == 22 }

        let again = try await migration.run()
        #expect(again.allSatisfy { $0.outcome == .upToDate }, "\(again)")
        try await harness.topology.prepare(forGroup: nil, declare: true, on: connection)
        await connection.close()
    }

    /// A migration interrupted after a queue was emptied into its temporary queue finishes on
    /// the next run: the messages come back.
    @Test func anInterruptedMigrationIsFinishedByTheNextRun() async throws {
        let harness = try SyncHarness("resume")
        defer { harness.tearDown() }
        let connection = try await harness.connect("operator")
        let declarations = harness.topology.declarations(forGroup: nil)
        try await declarations.declare(on: connection)
        let main = SyncTopology.queue(for: .group, group: "consumer_org_rpc")
        let temporary = TopologyMigration.temporaryQueue(for: main)
        try await connection.declare(QueueSpec(name: temporary, arguments: QueueArguments(queueType: .quorum)))
        for index in 0..<5 { try await connection.publish(Self.message("stranded-\(index)"), exchange: "", routingKey: temporary) }

        // Services refuse to start on top of it: they would strand what it holds.
        await #expect {
            try await harness.topology.prepare(forGroup: "consumer_org_rpc", declare: true, on: connection)
        } throws: { "\($0)".contains(temporary) && "\($0)".contains("topology migrate") }

        let outcomes = try await TopologyMigration(topology: harness.topology, broker: connection,
                                                   logger: Broker.logger("resume")).run()
        #expect(outcomes.first { $0.queue == main }?.outcome == .resumed(moved: 5))
        #expect(try await Self.texts(of: main, on: connection, count: 5) == (0..<5).map { "stranded-\($0)" })
        await #expect(throws: AMQPError.self) { try await connection.queueStatus(temporary) }
        await connection.close()
    }

    static func message(_ text: String) -> OutgoingMessage {
        OutgoingMessage(body: Array(text.utf8), contentType: "text/plain")
    }

    /// The first `count` message bodies of a queue, read and put back.
    static func texts(of queue: String, on connection: AMQPConnection, count: Int) async throws -> [String] {
        let consumer = try await connection.consume(queue: queue, prefetch: UInt16(count))
        var texts: [String] = []
        var held: [Delivery] = []
        for await delivery in consumer.deliveries {
            texts.append(String(decoding: delivery.body, as: UTF8.self))
            held.append(delivery)
            if held.count == count { break }
        }
        // Cancelled first: put back while subscribed, they would come straight back to it.
        await consumer.cancel()
        for delivery in held { try await delivery.reject(requeue: true) }
        return texts
    }
}
