import Synchronization

/// A batch of publishes handed to a broker by `MessageBroker.submit`: sent in order behind every
/// batch submitted before it, its outcomes known once the broker confirmed or refused each one.
/// One caller awaits `outcomes()`; it may do so before or after they are known.
public final class PublishTicket: Sendable {
    private struct State {
        var results: [Result<Void, AMQPError>]?
        var waiter: CheckedContinuation<[Result<Void, AMQPError>], Never>?
    }

    private let state: Mutex<State>

    /// A ticket whose outcomes come later, through `complete(_:)`.
    public init() {
        self.state = Mutex(State())
    }

    /// A ticket whose outcomes are known already (a broker that settles publishes at once).
    public init(results: [Result<Void, AMQPError>]) {
        self.state = Mutex(State(results: results))
    }

    /// Records every publish's outcome, in the batch's order; only the first call counts.
    public func complete(_ results: [Result<Void, AMQPError>]) {
        let waiter = self.state.withLock { state -> CheckedContinuation<[Result<Void, AMQPError>], Never>? in
            guard state.results == nil else { return nil }
            state.results = results
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: results)
    }

    /// Each publish's outcome, in the batch's order, once all are known.
    public func outcomes() async -> [Result<Void, AMQPError>] {
        if let results = self.state.withLock({ $0.results }) { return results }
        return await withCheckedContinuation { continuation in
            let results = self.state.withLock { state -> [Result<Void, AMQPError>]? in
                if let results = state.results { return results }
                precondition(state.waiter == nil, "a publish ticket's outcomes are awaited by one caller")
                state.waiter = continuation
                return nil
            }
            if let results { continuation.resume(returning: results) }
        }
    }
}
