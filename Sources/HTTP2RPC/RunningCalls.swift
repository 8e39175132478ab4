import Synchronization

/// Counts the calls running as tasks of their own, so that the server stops only after they
/// have ended (as grpc-swift's handlers, children of the server's task, do): a producer must not
/// close its store under a mutation still committing.
final class RunningCalls: Sendable {
    private struct State {
        var count = 0
        var closed = false
        var drained: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    /// Counts one more call; false once the server has stopped, when none may start.
    func enter() -> Bool {
        self.state.withLock { state in
            guard !state.closed else { return false }
            state.count += 1
            return true
        }
    }

    /// A call counted by `enter` has ended.
    func leave() {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.count -= 1
            guard state.count == 0 else { return [] }
            defer { state.drained.removeAll() }
            return state.drained
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Refuses further calls and waits until the running ones have ended.
    func closeAndDrain() async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let now = self.state.withLock { state -> Bool in
                state.closed = true
                guard state.count > 0 else { return true }
                state.drained.append(done)
                return false
            }
            if now { done.resume() }
        }
    }
}
