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

    /// A signal sent while one task is parked and another is about to park wakes both: the
    /// second must not sleep through it (it would wait out its whole timeout).
    @Test func aSignalWakesAWaitAboutToParkBesideAParkedOne() async throws {
        let signal = WakeSignal()
        let parked = Task { await signal.wait() }
        while signal.parkedForTesting == 0 { try await Task.sleep(for: .milliseconds(1)) }
        let late = Task { () -> Bool in
            await withTaskGroup(of: Bool.self) { group in
                // `unless` runs once the wait is armed, before it parks: the signal comes then.
                group.addTask { await signal.wait(timeout: .seconds(3600)) { signal.signal(); return false }; return true }
                group.addTask { try? await Task.sleep(for: .seconds(20)); return false }
                let first = await group.next() ?? false
                group.cancelAll()
                return first
            }
        }
        #expect(await late.value, "the wait about to park slept through the signal")
        await parked.value
        #expect(signal.idleForTesting)
    }

    @Test func aWaitWhoseConditionHoldsReturnsAtOnceAndKeepsNoSignal() async {
        let signal = WakeSignal()
        await signal.wait(timeout: .seconds(3600)) { true }
        #expect(signal.idleForTesting)
        // The wait took no signal: one sent now is kept for the next wait.
        signal.signal()
        await signal.wait(timeout: .seconds(3600))
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
