import Synchronization

/// Runs `work` in a task of its own and returns what it returns, unless `deadline` comes first
/// (then it throws `late()`) or the caller is cancelled (then `cancelled()`). Either way `work`
/// is cancelled but not waited for: a caller with a deadline must get its answer on time even
/// from work that ignores cancellation (a connect waiting for a server that never answers).
public func abandoning<T: Sendable>(at deadline: ContinuousClock.Instant,
                                    late: @escaping @Sendable () -> any Error,
                                    cancelled: @escaping @Sendable () -> any Error,
                                    _ work: @escaping @Sendable () async throws -> T) async throws -> T {
    let running = Task { try await work() }
    // The waiting caller and the timer that ends its wait: whichever ends it first (the work,
    // the timer, a cancellation) resumes it once and stops the timer.
    let waiter = Mutex<(caller: CheckedContinuation<T, any Error>?, timer: Task<Void, any Error>?)>((nil, nil))
    let finish = { @Sendable (result: Result<T, any Error>) in
        let (caller, timer) = waiter.withLock { state in
            defer { state = (nil, nil) }
            return state
        }
        timer?.cancel()
        caller?.resume(with: result)
    }
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            waiter.withLock { $0.caller = continuation }
            let timer = Task {
                try await Task.sleep(until: deadline, clock: .continuous)
                running.cancel()
                finish(.failure(late()))
            }
            // Kept only while the caller still waits; else its wait has ended already.
            let kept = waiter.withLock { state -> Bool in
                guard state.caller != nil else { return false }
                state.timer = timer
                return true
            }
            if !kept { timer.cancel() }
            Task { finish(await running.result) }
            // A cancellation that came before the continuation was stored found nothing to end.
            if Task.isCancelled { finish(.failure(cancelled())) }
        }
    } onCancel: {
        running.cancel()
        finish(.failure(cancelled()))
    }
}
