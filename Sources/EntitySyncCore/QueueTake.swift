import AMQPModel

/// Takes the first messages of a queue through a short-lived consumer, bounded in count,
/// prefetch and time. Whatever it does not ack goes back to the queue, returned in the order received,
/// and its consumer is cancelled, on every way out: done, idle, deadline, a failing step, a lost
/// connection, or the caller's cancellation.
struct QueueTake: Sendable {
    /// What to do with a message once `body` has looked at it.
    enum Settle: Sendable, Equatable { case ack, putBack }

    /// Why a take ended.
    enum Stop: Sendable, Equatable {
        /// It saw `count` messages (or a step failed).
        case done
        /// No message came for `idleTimeout`: the queue holds fewer than counted, or another
        /// consumer holds them.
        case idle
        case deadline
        /// The calling task was cancelled.
        case cancelled
        /// The consumer ended without being asked to: the connection closed.
        case connectionClosed
    }

    struct Outcome<Value: Sendable>: Sendable {
        var values: [Value]
        var stop: Stop
    }

    var count: Int
    /// Unsettled deliveries at once; a take that keeps messages can see at most this many.
    var prefetch: Int
    var idleTimeout: Duration
    var deadline: ContinuousClock.Instant?

    /// Runs `body` on each of the first `count` messages of `queue`. If `body` throws, that
    /// message and everything kept so far go back, and the error is rethrown.
    func run<Value: Sendable>(from queue: String, on broker: any MessageBroker,
                              _ body: @escaping @Sendable (Delivery) async throws -> (Value, Settle)) async throws -> Outcome<Value> {
        let consumer = try await broker.consume(queue: queue, prefetch: UInt16(clamping: max(1, self.prefetch)))
        let stop = MutexBox<Stop?>(nil)
        // Nil while `body` runs: a slow step (a store write) is not idleness.
        let idleSince = MutexBox<ContinuousClock.Instant?>(.now)
        let stopOnce: @Sendable (Stop) async -> Void = { reason in
            let first = stop.update { current -> Bool in
                guard current == nil else { return false }
                current = reason
                return true
            }
            if first { await consumer.cancel() }
        }
        let count = self.count
        // Unstructured, so that the caller's cancellation does not end the iteration: the
        // deliveries already buffered must still be seen to be put back.
        let worker = Task { () -> (values: [Value], failure: (any Error)?) in
            var values: [Value] = []
            var kept: [Delivery] = []
            var failure: (any Error)?
            var seen = 0
            for await delivery in consumer.deliveries {
                guard seen < count, failure == nil, stop.read({ $0 }) == nil else {
                    // Earlier messages go back first: quorum queues return them to the head in that order.
                    await Self.putBack(&kept)
                    try? await delivery.reject(requeue: true)
                    continue
                }
                seen += 1
                idleSince.update { $0 = nil }
                do {
                    let (value, settle) = try await body(delivery)
                    values.append(value)
                    switch settle {
                    case .ack: try await delivery.ack()
                    case .putBack: kept.append(delivery)
                    }
                } catch {
                    failure = error
                    kept.append(delivery)
                }
                idleSince.update { $0 = .now }
                if seen == count || failure != nil {
                    // Cancelled first: a message put back while still subscribed comes straight back.
                    await stopOnce(.done)
                    await Self.putBack(&kept)
                }
            }
            await Self.putBack(&kept)
            return (values, failure)
        }
        let idleTimeout = self.idleTimeout
        let deadline = self.deadline
        let watcher = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(50))
                let now = ContinuousClock.now
                if let deadline, now >= deadline {
                    await stopOnce(.deadline)
                    return
                }
                if let since = idleSince.read({ $0 }), since + idleTimeout <= now {
                    await stopOnce(.idle)
                    return
                }
            }
        }
        let result = await withTaskCancellationHandler {
            await worker.value
        } onCancel: {
            Task { await stopOnce(.cancelled) }
        }
        watcher.cancel()
        if let failure = result.failure { throw failure }
        return Outcome(values: result.values, stop: stop.read { $0 } ?? .connectionClosed)
    }

    private static func putBack(_ kept: inout [Delivery]) async {
        for delivery in kept { try? await delivery.reject(requeue: true) }
        kept.removeAll()
    }
}
