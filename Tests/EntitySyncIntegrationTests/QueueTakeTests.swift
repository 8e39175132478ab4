import AMQPClient
@testable import EntitySyncCore
import EntitySyncTestSupport
import Testing

/// The short-lived consumer behind dead-letter listing, re-drive and migration: bounded, and it
/// always puts back what it kept and cancels its consumer.
@Suite(.enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct QueueTakeTests {
    static func fill(_ queue: String, count: Int, on connection: AMQPConnection) async throws {
        try await connection.declare(QueueSpec(name: queue, arguments: QueueArguments(queueType: .quorum)))
        for index in 0..<count {
            try await connection.publish(OutgoingMessage(body: Array("m\(index)".utf8), contentType: "text/plain"),
                                         exchange: "", routingKey: queue)
        }
    }

    /// Issue 12 item 7: a cancelled list call left its consumer subscribed and the messages it
    /// held pinned.
    @Test(.timeLimit(.minutes(1))) func aCancelledTakePutsBackWhatItHeldInOrder() async throws {
        let harness = try SyncHarness("take_cancel")
        defer { harness.tearDown() }
        let connection = try await harness.connect("take")
        try await Self.fill("held", count: 10, on: connection)
        // Waits for 20 of 10 with a long idle timeout: only the cancellation ends it.
        let take = QueueTake(count: 20, prefetch: 20, idleTimeout: .seconds(600), deadline: nil)
        let task = Task {
            try await take.run(from: "held", on: connection) { delivery in
                (String(decoding: delivery.body, as: UTF8.self), QueueTake.Settle.putBack)
            }
        }
        try await eventually("the take holds all ten") { try await connection.queueStatus("held").messageCount == 0 }
        task.cancel()
        let outcome = try await task.value
        #expect(outcome.stop == .cancelled)
        #expect(outcome.values.count == 10)
        try await eventually("all ten are back and the consumer is gone") {
            let status = try await connection.queueStatus("held")
            return status.messageCount == 10 && status.consumerCount == 0
        }
        let again = try await QueueTake(count: 10, prefetch: 10, idleTimeout: .seconds(5), deadline: nil)
            .run(from: "held", on: connection) { delivery in (String(decoding: delivery.body, as: UTF8.self), .putBack) }
        #expect(again.values == (0..<10).map { "m\($0)" })
        #expect(again.stop == .done)
        await connection.close()
    }

    /// Fewer messages than counted (another caller holds the rest): the take returns what it
    /// has once none comes for the idle timeout, and puts it back.
    @Test func aTakeThatRunsDryReturnsWhatItHas() async throws {
        let harness = try SyncHarness("take_idle")
        defer { harness.tearDown() }
        let connection = try await harness.connect("take")
        try await Self.fill("short", count: 3, on: connection)
        let outcome = try await QueueTake(count: 5, prefetch: 5, idleTimeout: .milliseconds(300), deadline: nil)
            .run(from: "short", on: connection) { delivery in (String(decoding: delivery.body, as: UTF8.self), .putBack) }
        #expect(outcome.values == ["m0", "m1", "m2"])
        #expect(outcome.stop == .idle)
        try await eventually("all three are back") {
            let status = try await connection.queueStatus("short")
            return status.messageCount == 3 && status.consumerCount == 0
        }
        await connection.close()
    }
}
