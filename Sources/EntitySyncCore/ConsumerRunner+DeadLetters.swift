import AMQPModel
import Logging

extension ConsumerRunner {
    /// Dead letters one list call shows per queue at most: it holds each one unacked until it has
    /// seen them all, so this is also its prefetch.
    public static let deadLetterListLimit = 1000
    /// How long a list waits for the next message before it returns what it has: the queue may
    /// hold fewer than it counted, or another caller may hold them.
    static let deadLetterIdleTimeout = Duration.seconds(1)
    /// The longest a list call holds dead letters before it puts them back.
    static let deadLetterListDeadline = Duration.seconds(10)

    /// Up to `limit` dead letters per queue of `kinds`, oldest first, left in their queues; and
    /// how many the queues hold in all. Returns early with what it has when the messages do not
    /// come (another caller holds them) or after `deadLetterListDeadline`.
    public func listDeadLetters(kinds: Set<EntityKind>, limit: Int) async throws -> (letters: [DeadLetterInfo], total: Int) {
        var letters: [DeadLetterInfo] = []
        var total = 0
        let deadline = ContinuousClock.now + Self.deadLetterListDeadline
        for (kind, queue) in self.topology.queues(forGroup: self.group) where kinds.contains(kind) {
            let deadLetterQueue = SyncTopology.deadLetterQueue(forQueue: queue)
            let count = try await self.broker.queueStatus(deadLetterQueue).messageCount
            total += count
            let wanted = min(count, limit - letters.count, Self.deadLetterListLimit)
            guard wanted > 0 else { continue }
            let take = QueueTake(count: wanted, prefetch: wanted, idleTimeout: Self.deadLetterIdleTimeout, deadline: deadline)
            let outcome = try await take.run(from: deadLetterQueue, on: self.broker) { delivery in
                (Self.describe(delivery, kind: kind, queue: deadLetterQueue), .putBack)
            }
            letters += outcome.values
            try Self.check(outcome.stop, queue: deadLetterQueue, seen: outcome.values.count, of: wanted)
        }
        return (letters, total)
    }

    /// Takes up to `limit` dead letters (all there are now when nil) of `kinds` and applies each
    /// through the same path as a consumed event. An applied or stale one is acked; one that
    /// fails again goes to the back of its dead-letter queue with the new reason, so a re-drive
    /// never meets its own failures.
    public func redriveDeadLetters(kinds: Set<EntityKind>, limit: Int?) async throws -> RedriveReport {
        enum Step: Sendable { case applied, stale, failed(DeadLetterInfo) }
        var report = RedriveReport()
        var remaining = limit ?? Int.max
        for (kind, queue) in self.topology.queues(forGroup: self.group) where kinds.contains(kind) && remaining > 0 {
            let deadLetterQueue = SyncTopology.deadLetterQueue(forQueue: queue)
            let wanted = min(remaining, try await self.broker.queueStatus(deadLetterQueue).messageCount)
            guard wanted > 0 else { continue }
            remaining -= wanted
            // Each message is settled before the next, so a small prefetch loses nothing.
            let take = QueueTake(count: wanted, prefetch: min(wanted, 64), idleTimeout: Self.deadLetterIdleTimeout, deadline: nil)
            let outcome = try await take.run(from: deadLetterQueue, on: self.broker) { delivery -> (Step, QueueTake.Settle) in
                let reason: String
                switch await self.apply(delivery, kind: kind) {
                case .applied: return (.applied, .ack)
                case .stale: return (.stale, .ack)
                case .poison(let poison): reason = poison.description
                case .failed(let error): reason = "re-drive failed: \(error)"
                }
                var copy = OutgoingMessage(body: delivery.body, properties: delivery.properties)
                copy.properties.headers[Self.reasonHeader] = .string(reason)
                // Through the group's forward exchange, which its (least-privilege) user may write;
                // confirmed before the original is acked: a crash leaves a copy, never nothing.
                try await self.broker.publish(copy, exchange: SyncTopology.forwardExchange(forGroup: self.group),
                                                  routingKey: deadLetterQueue, mandatory: true)
                var info = Self.describe(delivery, kind: kind, queue: deadLetterQueue)
                info.reason = reason
                return (.failed(info), .ack)
            }
            for step in outcome.values {
                switch step {
                case .applied: report.applied += 1
                case .stale: report.stale += 1
                case .failed(let info):
                    report.failed += 1
                    if report.failures.count < RedriveReport.failureDetailLimit { report.failures.append(info) }
                }
            }
            self.logger.notice("dead letters re-driven", metadata: [
                "amqp.queue": "\(deadLetterQueue)", "applied": "\(report.applied)", "stale": "\(report.stale)",
                "failed": "\(report.failed)", "stop": "\(outcome.stop)",
            ])
            try Self.check(outcome.stop, queue: deadLetterQueue, seen: outcome.values.count, of: wanted)
        }
        return report
    }

    /// A take that ended because the caller went away or the connection closed is an error; one
    /// that ran out of messages (another caller took them) returns what it has.
    private static func check(_ stop: QueueTake.Stop, queue: String, seen: Int, of wanted: Int) throws {
        switch stop {
        case .done, .idle, .deadline: return
        case .cancelled: throw CancellationError()
        case .connectionClosed:
            throw SyncError(.brokerUnavailable, "the connection closed while reading \(queue) (\(seen) of \(wanted) "
                            + "messages read; those are back in the queue); try again")
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
