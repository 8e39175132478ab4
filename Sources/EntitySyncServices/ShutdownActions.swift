import Synchronization

/// Runs closures once when a process starts shutting down; a closure added after that runs at
/// once, so a task started while shutdown is already under way is still stopped.
final class ShutdownActions: Sendable {
    private struct State {
        var actions: [@Sendable () -> Void] = []
        var triggered = false
    }

    // One lock over one state: with a separate lock for the flag and for the list, an `add` that
    // read "not triggered" could append to the list after `run` had taken it, and that action
    // (cancelling a task) never ran.
    private let state = Mutex(State())

    /// Keeps `action` for `run()`, or runs it now if `run()` has already been called.
    func add(_ action: @escaping @Sendable () -> Void) {
        let runNow = self.state.withLock { state -> Bool in
            if state.triggered { return true }
            state.actions.append(action)
            return false
        }
        // Outside the lock: an action may itself call `add`.
        if runNow { action() }
    }

    /// Runs every action added so far, each once, in the order added; later calls do nothing.
    func run() {
        let actions = self.state.withLock { state -> [@Sendable () -> Void] in
            guard !state.triggered else { return [] }
            state.triggered = true
            defer { state.actions = [] }
            return state.actions
        }
        for action in actions { action() }
    }
}
