import AMQPModel
import Logging

/// Brings queues that an earlier EntitySync declared with other arguments to the arguments this
/// version declares, keeping every message. Queue arguments cannot change in place (RabbitMQ
/// answers PRECONDITION_FAILED), so each such queue is emptied into a temporary queue that
/// receives what the original would (same bindings), deleted, declared anew, and refilled.
///
/// Safe to run again after an interruption: a temporary queue left behind is emptied back into
/// its queue. The consumer services must be stopped; the producer may keep publishing (a change
/// published meanwhile may arrive twice, which the version rule absorbs).
public struct TopologyMigration: Sendable {
    /// What happened to one queue.
    public enum Outcome: Sendable, Equatable {
        case upToDate
        /// Declared anew with the current arguments; `moved` messages went out and back.
        case migrated(moved: Int)
        /// An interrupted migration was finished: `moved` messages came back from the temporary queue.
        case resumed(moved: Int)
    }

    public let topology: SyncTopology
    let broker: any MessageBroker
    let logger: Logger

    public init(topology: SyncTopology, broker: any MessageBroker, logger: Logger) {
        self.topology = topology
        self.broker = broker
        self.logger = logger
    }

    /// Where a queue's messages wait while it is declared anew.
    public static func temporaryQueue(for queue: String) -> String { "\(queue).migrating" }

    /// Migrates every queue of the topology that needs it and declares the rest as usual.
    public func run() async throws -> [(queue: String, outcome: Outcome)] {
        let declarations = self.topology.declarations(forGroup: nil)
        for exchange in declarations.exchanges { try await self.broker.declare(exchange) }
        // Main queues first: a main queue's retry queue is emptied into it as it moves (an old
        // retry queue dead-letters at-most-once, so nothing may expire into a queue that is
        // briefly gone). Retry queues last, by then usually empty.
        let ordered = declarations.queues.sorted { Self.rank($0.name) < Self.rank($1.name) }
        let names = Set(declarations.queues.map(\.name))
        var outcomes: [(queue: String, outcome: Outcome)] = []
        for spec in ordered {
            let retry = SyncTopology.retryQueue(forQueue: spec.name)
            let outcome = try await self.migrate(spec, bindings: declarations.bindings.filter { $0.queue == spec.name },
                                                 feeders: names.contains(retry) ? [retry] : [])
            self.logger.notice("queue checked", metadata: ["amqp.queue": "\(spec.name)", "outcome": "\(outcome)"])
            outcomes.append((spec.name, outcome))
        }
        for binding in declarations.bindings { try await self.broker.bind(binding) }
        return outcomes
    }

    private static func rank(_ queue: String) -> Int {
        if queue.hasSuffix(".retry") { return 2 }
        if queue.hasSuffix(".dlq") { return 1 }
        return 0
    }

    /// `feeders` are queues that dead-letter into `spec`'s queue by name (its retry queue): they
    /// are emptied into the temporary queue too, so nothing reaches the queue while it is gone.
    private func migrate(_ spec: QueueSpec, bindings: [BindingSpec], feeders: [String]) async throws -> Outcome {
        let temporary = QueueSpec(name: Self.temporaryQueue(for: spec.name), arguments: spec.arguments)
        let temporaryBindings = bindings.map {
            BindingSpec(queue: temporary.name, exchange: $0.exchange, routingKey: $0.routingKey, arguments: $0.arguments)
        }
        let current: Bool
        do {
            try await self.broker.declare(spec)
            current = true
        } catch let error as AMQPError where error.code == .preconditionFailed {
            self.logger.notice("queue has other arguments; migrating", metadata: [
                "amqp.queue": "\(spec.name)", "reason": "\(error.message)",
            ])
            current = false
        }
        if current {
            guard try await self.exists(temporary.name) else { return .upToDate }
            for binding in bindings { try await self.broker.bind(binding) }
            return .resumed(moved: try await self.finish(temporary.name, bindings: temporaryBindings, into: spec.name))
        }
        let status = try await self.broker.queueStatus(spec.name)
        guard status.consumerCount == 0 else {
            throw SyncError(.configuration, "queue '\(spec.name)' has \(status.consumerCount) consumer(s): stop the "
                            + "consumer services (user-rpc, org-rpc) before migrating; the producer may keep running")
        }
        try await self.broker.declare(temporary)
        // From here on, what the queue would receive goes to the temporary queue alone.
        for binding in temporaryBindings { try await self.broker.bind(binding) }
        for binding in bindings { try await self.broker.unbind(binding) }
        var moved = 0
        for feeder in feeders where try await self.exists(feeder) {
            // Retried now rather than after their delay: without their TTL, or they would expire
            // (and be dead-lettered) in the queue they are meant to be consumed from.
            moved += try await self.move(from: feeder, to: temporary.name, keepingExpiration: false)
        }
        moved += try await self.move(from: spec.name, to: temporary.name)
        try await self.expectEmpty(spec.name)
        let left = try await self.broker.deleteQueue(spec.name, ifEmpty: false)
        guard left == 0 else {
            throw SyncError(.brokerUnavailable, "queue '\(spec.name)' received \(left) message(s) after it was emptied "
                            + "and unbound (is a consumer service still running?); they are lost. Stop every consumer "
                            + "service and run the migration again to finish it")
        }
        try await self.broker.declare(spec)
        for binding in bindings { try await self.broker.bind(binding) }
        _ = try await self.finish(temporary.name, bindings: temporaryBindings, into: spec.name)
        return .migrated(moved: moved)
    }

    /// Unbinds the temporary queue (its queue is bound again by now and receives new events
    /// itself), empties it into its queue, and deletes it. Unbound first, so that a producer
    /// publishing faster than the move cannot keep it from ever running empty.
    private func finish(_ temporary: String, bindings: [BindingSpec], into queue: String) async throws -> Int {
        for binding in bindings { try await self.broker.unbind(binding) }
        let moved = try await self.move(from: temporary, to: queue)
        try await self.expectEmpty(temporary)
        let left = try await self.broker.deleteQueue(temporary, ifEmpty: false)
        guard left == 0 else {
            throw SyncError(.brokerUnavailable, "temporary queue '\(temporary)' received \(left) message(s) after it was "
                            + "emptied and unbound; they are lost")
        }
        return moved
    }

    private func exists(_ queue: String) async throws -> Bool {
        do {
            _ = try await self.broker.queueStatus(queue)
            return true
        } catch let error as AMQPError where error.code == .notFound {
            return false
        }
    }

    /// Nothing left to lose by deleting it: no message, and nobody consuming that could be sent one.
    private func expectEmpty(_ queue: String) async throws {
        let status = try await self.broker.queueStatus(queue)
        guard status.messageCount == 0, status.consumerCount == 0 else {
            throw SyncError(.configuration, "queue '\(queue)' still holds \(status.messageCount) message(s) and has "
                            + "\(status.consumerCount) consumer(s) after it was emptied; stop every consumer service and "
                            + "run the migration again (it resumes)")
        }
    }

    /// Moves every message of `source` to `target`, in order, each confirmed before its original
    /// is acked, until the broker reports `source` empty. Counting deliveries is not enough: after
    /// a reconnect some come again (copied twice, which the version rule absorbs) and some come
    /// only after the take went idle.
    private func move(from source: String, to target: String, keepingExpiration: Bool = true) async throws -> Int {
        var moved = 0
        var fruitless = 0
        while true {
            let count = try await self.broker.queueStatus(source).messageCount
            guard count > 0 else { return moved }
            let take = QueueTake(count: count, prefetch: min(count, 256), idleTimeout: .seconds(5), deadline: nil)
            let broker = self.broker
            let outcome = try await take.run(from: source, on: broker) { delivery in
                var copy = OutgoingMessage(body: delivery.body, properties: delivery.properties)
                if !keepingExpiration { copy.properties.expiration = nil }
                try await broker.publish(copy, exchange: "", routingKey: target, mandatory: true)
                return ((), .ack)
            }
            if outcome.stop == .cancelled { throw CancellationError() }
            moved += outcome.values.count
            fruitless = outcome.values.isEmpty ? fruitless + 1 : 0
            guard fruitless < 3 else {
                throw SyncError(.brokerUnavailable, "queue '\(source)' reports \(count) message(s) but delivers none "
                                + "(another consumer holds them?); stop every consumer service and run the migration again")
            }
        }
    }
}
