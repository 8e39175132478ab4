import EntitySyncCore
import Testing

@Suite struct WakeSignalTests {
    @Test func aSignalBeforeTheWaitIsKept() async {
        let signal = WakeSignal()
        signal.signal()
        let start = ContinuousClock.now
        await signal.wait(timeout: .seconds(30))
        #expect(start.duration(to: .now) < .seconds(10))
    }

    @Test func aWaitEndsOnSignal() async {
        let signal = WakeSignal()
        let waiter = Task { await signal.wait(timeout: .seconds(60)) }
        await Self.signal(signal, until: waiter)
    }

    /// Signals until `waiter` has returned: proves a wake-up without relying on timing (a
    /// signal sent before it parked is kept, one after wakes it).
    private static func signal(_ signal: WakeSignal, until waiter: Task<Void, Never>) async {
        while !Task.isCancelled {
            signal.signal()
            let returned = await Task { () -> Bool in
                await withTaskGroup(of: Bool.self) { group in
                    group.addTask { await waiter.value; return true }
                    group.addTask { try? await Task.sleep(for: .milliseconds(50)); return false }
                    let first = await group.next() ?? false
                    group.cancelAll()
                    return first
                }
            }.value
            if returned { break }
        }
    }

    @Test func aWaitEndsAtItsTimeout() async {
        let signal = WakeSignal()
        await signal.wait(timeout: .milliseconds(20))
    }

    @Test func aWaitWithoutTimeoutTakesAKeptSignal() async {
        let signal = WakeSignal()
        signal.signal()
        await signal.wait()
        // The signal was taken: a second wait needs a signal of its own.
        let second = Task { await signal.wait() }
        signal.signal()
        await second.value
    }

    @Test func aWaitWithoutTimeoutEndsOnSignal() async {
        let signal = WakeSignal()
        let waiter = Task { await signal.wait() }
        await Self.signal(signal, until: waiter)
    }

    @Test func aWaitWithoutTimeoutEndsWhenCancelled() async {
        let signal = WakeSignal()
        let waiter = Task { await signal.wait() }
        waiter.cancel()
        await waiter.value
        // A cancelled wait leaves no waiter behind to swallow the next signal.
        signal.signal()
        await signal.wait()
    }

    @Test func manyWaitsLeaveNothingBehind() async {
        let signal = WakeSignal()
        for _ in 0..<200 {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await signal.wait(timeout: .milliseconds(1)) }
                group.addTask { await signal.wait() }
                signal.signal()
                try? await Task.sleep(for: .milliseconds(1))
                signal.signal()
                group.cancelAll()
            }
        }
        #expect(signal.idleForTesting)
    }
}
