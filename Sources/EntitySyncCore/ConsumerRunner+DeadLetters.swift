import AMQPClient
import Logging

/// One message in a dead-letter queue, as far as it can be read.
public struct DeadLetterInfo: Sendable, Equatable {
    public var queue: String
    public var kind: EntityKind
    /// Nil when the body could not be decoded.
    public var entityID: String?
    public var version: UInt64?
    public var messageID: String?
    public var reason: String
    public var contentType: String?
    public var size: Int
}

/// What a re-drive did with the dead letters it took.
public struct RedriveReport: Sendable, Equatable {
    public var applied = 0
    public var stale = 0
    public var failed = 0
    /// The first `failureDetailLimit` failures, with their new reason.
    public var failures: [DeadLetterInfo] = []

    public static let failureDetailLimit = 100

    public init() {}
}

extension ConsumerRunner {
    /// Up to `limit` dead letters per queue of `kinds`, oldest first, left in their queues; and
    /// how many the queues hold in all.
    public func listDeadLetters(kinds: Set<EntityKind>, limit: Int) async throws -> (letters: [DeadLetterInfo], total: Int) {
        var letters: [DeadLetterInfo] = []
        var total = 0
        for (kind, queue) in self.topology.queues(forGroup: self.group) where kinds.contains(kind) {
            let deadLetterQueue = SyncTopology.deadLetterQueue(forQueue: queue)
            let count = try await self.connection.queueStatus(deadLetterQueue).messageCount
            total += count
            let wanted = min(count, limit - letters.count)
            guard wanted > 0 else { continue }
            try await self.take(wanted, from: deadLetterQueue) { delivery in
                letters.append(Self.describe(delivery, kind: kind, queue: deadLetterQueue))
                return false
            }
        }
        return (letters, total)
    }

    /// Takes up to `limit` dead letters (all there are now when nil) of `kinds` and applies each
    /// through the same path as a consumed event. An applied or stale one is acked; one that
    /// fails again goes to the back of its dead-letter queue with the new reason, so a re-drive
    /// never meets its own failures.
    public func redriveDeadLetters(kinds: Set<EntityKind>, limit: Int?) async throws -> RedriveReport {
        var report = RedriveReport()
        var remaining = limit ?? Int.max
        for (kind, queue) in self.topology.queues(forGroup: self.group) where kinds.contains(kind) && remaining > 0 {
            let deadLetterQueue = SyncTopology.deadLetterQueue(forQueue: queue)
            let wanted = min(remaining, try await self.connection.queueStatus(deadLetterQueue).messageCount)
            guard wanted > 0 else { continue }
            remaining -= wanted
            try await self.take(wanted, from: deadLetterQueue) { delivery in
                let reason: String
                switch await self.apply(delivery, kind: kind) {
                case .applied:
                    report.applied += 1
                    return true
                case .stale:
                    report.stale += 1
                    return true
                case .poison(let poison):
                    reason = poison.description
                case .failed(let error):
                    reason = "re-drive failed: \(error)"
                }
                var copy = OutgoingMessage(body: delivery.body, properties: delivery.properties)
                copy.properties.headers[Self.reasonHeader] = .string(reason)
                // Confirmed before the original is acked: a crash leaves a copy, never nothing.
                try await self.connection.publish(copy, exchange: "", routingKey: deadLetterQueue)
                report.failed += 1
                if report.failures.count < RedriveReport.failureDetailLimit {
                    var info = Self.describe(delivery, kind: kind, queue: deadLetterQueue)
                    info.reason = reason
                    report.failures.append(info)
                }
                return true
            }
            self.logger.notice("dead letters re-driven", metadata: [
                "amqp.queue": "\(deadLetterQueue)", "applied": "\(report.applied)", "stale": "\(report.stale)",
                "failed": "\(report.failed)",
            ])
        }
        return report
    }

    /// Receives the first `count` messages of `queue` and hands each to `body`, which says
    /// whether to ack it (true) or put it back (false). Extra deliveries the prefetch brought are
    /// put back. Throws if the queue ran dry or the connection failed first.
    private func take(_ count: Int, from queue: String, _ body: (Delivery) async throws -> Bool) async throws {
        let consumer = try await self.connection.consume(queue: queue, prefetch: UInt16(min(count, 256)))
        var kept: [Delivery] = []
        var seen = 0
        var failure: (any Error)?
        for await delivery in consumer.deliveries {
            guard seen < count, failure == nil else {
                try? await delivery.reject(requeue: true)
                continue
            }
            seen += 1
            do {
                if try await body(delivery) {
                    try await delivery.ack()
                } else {
                    kept.append(delivery)
                }
            } catch {
                failure = error
                try? await delivery.reject(requeue: true)
            }
            if seen == count || failure != nil {
                // Put back what was only looked at, in the order received: quorum queues return
                // messages to the head in that order, classic queues to their old positions.
                for delivery in kept { try? await delivery.reject(requeue: true) }
                kept.removeAll()
                await consumer.cancel()
            }
        }
        if let failure { throw failure }
        guard seen == count else {
            throw SyncError(.brokerUnavailable, "the connection closed while reading \(queue) (\(seen) of \(count) messages read); try again")
        }
    }

    static func describe(_ delivery: Delivery, kind: EntityKind, queue: String) -> DeadLetterInfo {
        let decoded = try? ChangeCodec.decode(body: delivery.body, contentType: delivery.properties.contentType, expected: kind).get()
        return DeadLetterInfo(
            queue: queue, kind: kind, entityID: decoded?.entityID, version: decoded?.version,
            messageID: delivery.properties.messageID, reason: Self.reason(of: delivery),
            contentType: delivery.properties.contentType, size: delivery.body.count)
    }

    /// Our own reason header, else the broker's: x-death's reason (rejected, delivery_limit, …).
    static func reason(of delivery: Delivery) -> String {
        if let reason = delivery.properties.headers[Self.reasonHeader]?.stringValue { return reason }
        if case .array(let deaths) = delivery.properties.headers["x-death"], case .table(let first) = deaths.first,
           let reason = first["reason"]?.stringValue {
            return "dead-lettered by the broker: \(reason)"
        }
        return "unknown (no reason header)"
    }
}
