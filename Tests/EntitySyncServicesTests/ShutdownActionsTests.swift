@testable import EntitySyncServices
import Foundation
import Synchronization
import Testing

/// A service adds "cancel this task" actions while it starts, and a shutdown signal may arrive
/// at any point of that: every action must run exactly once, whenever it was added.
@Suite struct ShutdownActionsTests {
    @Test func anActionAddedAfterRunRunsAtOnce() {
        let actions = ShutdownActions()
        let before = Mutex(0)
        actions.add { before.withLock { $0 += 1 } }
        actions.run()
        #expect(before.withLock { $0 } == 1)

        let after = Mutex(0)
        actions.add { after.withLock { $0 += 1 } }
        // Synchronously, before add returns: the caller may rely on the task being cancelled.
        #expect(after.withLock { $0 } == 1)

        actions.run()
        #expect(before.withLock { $0 } == 1, "a second run must not repeat actions")
        #expect(after.withLock { $0 } == 1)
    }

    @Test func actionsAreRunInTheOrderAdded() {
        let actions = ShutdownActions()
        let order = Mutex<[Int]>([])
        for index in 0..<10 { actions.add { order.withLock { $0.append(index) } } }
        actions.run()
        #expect(order.withLock { $0 } == Array(0..<10))
    }

    @Test func anActionThatAddsAnotherDoesNotDeadlock() {
        let actions = ShutdownActions()
        let ran = Mutex(0)
        actions.add {
            actions.add { ran.withLock { $0 += 1 } }
            ran.withLock { $0 += 1 }
        }
        actions.run()
        #expect(ran.withLock { $0 } == 2)
    }

    /// Many threads add actions while another runs them: none may be lost (the defect: an add
    /// that saw "not yet triggered" appended to the list after run had taken it) or run twice.
    /// OS threads, more than there are cores, so that adders are also preempted between any two
    /// instructions of `add`, which is where the lost action hid.
    @Test func concurrentAddsDuringRunRunEachActionExactlyOnce() {
        let rounds = 100
        let adders = 8
        let perAdder = 1500
        var lost = 0
        var repeated = 0
        for _ in 0..<rounds {
            let actions = ShutdownActions()
            let tally = Tally(adders * perAdder)
            let finished = DispatchGroup()
            for adder in 0..<adders {
                finished.enter()
                Thread {
                    for step in 0..<perAdder {
                        let index = adder * perAdder + step
                        tally.started()
                        actions.add { tally.increment(index) }
                    }
                    finished.leave()
                }.start()
            }
            // In the middle of the adds, so that both sides of run are exercised.
            while tally.startedCount < adders * perAdder / 3 { sched_yield() }
            actions.run()
            finished.wait()
            let final = tally.values
            lost += final.filter { $0 == 0 }.count
            repeated += final.filter { $0 > 1 }.count
        }
        #expect(lost == 0, "actions added around run() that never ran")
        #expect(repeated == 0, "actions that ran more than once")
    }
}

/// Per-action run counts, shared by reference with the threads that add the actions.
private final class Tally: Sendable {
    private let counts: Mutex<[Int]>
    private let adds = Atomic(0)

    init(_ count: Int) { self.counts = Mutex([Int](repeating: 0, count: count)) }

    func started() { self.adds.add(1, ordering: .relaxed) }

    var startedCount: Int { self.adds.load(ordering: .relaxed) }

    func increment(_ index: Int) { self.counts.withLock { $0[index] += 1 } }

    var values: [Int] { self.counts.withLock { $0 } }
}
