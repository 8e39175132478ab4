import Synchronization

/// Wakes a waiting task when something happened (e.g. a commit), without polling. A signal
/// that arrives while nobody waits is kept, so the next wait returns at once.
public final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        /// Waits begun but not parked yet: a signal meanwhile is theirs too, or one of several
        /// tasks about to wait would sleep through it while another took it.
        var armed: Set<Int> = []
        /// Waits ended (timeout, cancellation or a signal) before their continuation was registered.
        var ended: Set<Int> = []
        var nextID = 0
    }
    private let state = Mutex(State())

    public init() {}

    public func signal() {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard !state.waiters.isEmpty || !state.armed.isEmpty else {
                state.pending = true
                return []
            }
            state.ended.formUnion(state.armed)
            state.armed.removeAll()
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns after a signal, or at once if cancelled.
    public func wait() async {
        guard let id = self.begin() else { return }
        await withTaskCancellationHandler {
            await self.park(id)
        } onCancel: {
            self.resume(id)
        }
        self.forget(id)
    }

    /// Returns after a signal or after `timeout`, whichever comes first (or at once if cancelled),
    /// or at once if `unless` holds once the wait is armed: a condition set before a signal is
    /// sent (a stop flag) then cannot slip between the caller's check and the wait.
    public func wait(timeout: Duration, unless: () -> Bool = { false }) async {
        guard let id = self.begin() else { return }
        if unless() {
            self.forget(id)
            return
        }
        // One child, the timer; cancelling this task cancels it, which ends the wait too.
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                self.resume(id)
            }
            await self.park(id)
            group.cancelAll()
        }
        // The timer's resume may have come after the signal's and left the id behind.
        self.forget(id)
    }

    private func forget(_ id: Int) {
        self.state.withLock { state in
            state.ended.remove(id)
            state.armed.remove(id)
        }
    }

    /// Takes a pending signal (nil: return at once, no timer or task needed) or a waiter id.
    private func begin() -> Int? {
        self.state.withLock { state -> Int? in
            if state.pending {
                state.pending = false
                return nil
            }
            state.nextID += 1
            state.armed.insert(state.nextID)
            return state.nextID
        }
    }

    /// Suspends until `resume(id)` or a signal; at once if either came first.
    private func park(_ id: Int) async {
        await withCheckedContinuation { continuation in
            let resumeNow = self.state.withLock { state -> Bool in
                state.armed.remove(id)
                if state.ended.remove(id) != nil { return true }
                if state.pending {
                    state.pending = false
                    return true
                }
                state.waiters[id] = continuation
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    /// Waits parked now (for tests).
    package var parkedForTesting: Int {
        self.state.withLock { $0.waiters.count }
    }

    /// Nobody waits and no ended wait left its id behind (for tests: ids must not pile up).
    package var idleForTesting: Bool {
        self.state.withLock { $0.waiters.isEmpty && $0.ended.isEmpty && $0.armed.isEmpty }
    }

    private func resume(_ id: Int) {
        let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
            state.ended.insert(id)
            return nil
        }
        waiter?.resume()
    }
}
