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
        // Keep signalling until the waiter has returned: proves wake-up without relying on timing.
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
}
