import Synchronization

/// Hands a consumer's deliveries out in batches: each batch is every delivery that has arrived
/// since the last one was taken, up to `maximum`, and waits only when none has. An idle queue
/// gives batches of one at once (no added latency); a backlog gives full batches, so a consumer
/// can apply many in one transaction and settle them with one `ack(multiple:)`.
public final class DeliveryBatcher: Sendable {
    private struct State {
        var buffer: [Delivery] = []
        var finished = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())
    private let maximum: Int

    /// Starts reading `deliveries` (until it ends) into batches of at most `maximum`.
    public init(_ deliveries: AsyncStream<Delivery>, maximum: Int) {
        self.maximum = max(1, maximum)
        // Unstructured and never cancelled: it ends when the stream does (the consumer was
        // cancelled or its connection closed), so no delivery is dropped between the two.
        Task {
            for await delivery in deliveries {
                let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
                    state.buffer.append(delivery)
                    defer { state.waiter = nil }
                    return state.waiter
                }
                waiter?.resume()
            }
            let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
                state.finished = true
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }

    /// The next batch (never empty), or nil once the stream ended and every delivery was handed
    /// out. One caller at a time. Cancellation is not observed: end it by cancelling the consumer.
    public func next() async -> [Delivery]? {
        while true {
            let taken = self.state.withLock { state -> [Delivery]?? in
                if !state.buffer.isEmpty {
                    let count = min(self.maximum, state.buffer.count)
                    let batch = Array(state.buffer.prefix(count))
                    state.buffer.removeFirst(count)
                    return .some(batch)
                }
                return state.finished ? .some(nil) : nil
            }
            if let taken { return taken }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = self.state.withLock { state -> Bool in
                    if !state.buffer.isEmpty || state.finished { return true }
                    state.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        }
    }
}
