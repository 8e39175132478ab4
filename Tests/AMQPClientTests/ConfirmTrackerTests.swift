@testable import AMQPClient
import Testing

@Suite struct ConfirmTrackerTests {
    /// A tracker with publishes "a"…"e" registered as sequence numbers 1…5.
    func tracker() -> ConfirmTracker<String> {
        var tracker = ConfirmTracker<String>()
        for token in ["a", "b", "c", "d", "e"] { tracker.register(token) }
        return tracker
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var events: [(tag: UInt64, multiple: Bool, nack: Bool)]
        var settled: [String]
        var outstanding: Int
        var testDescription: String { "\(self.events.map { "\($0.nack ? "nack" : "ack")(\($0.tag)\($0.multiple ? ",multi" : ""))" })" }
    }

    @Test(arguments: [
        Case(events: [(3, false, false)], settled: ["c"], outstanding: 4),
        Case(events: [(2, true, false)], settled: ["a", "b"], outstanding: 3),
        Case(events: [(3, false, false), (4, true, false)], settled: ["c", "a", "b", "d"], outstanding: 1),
        Case(events: [(5, true, false), (5, true, false)], settled: ["a", "b", "c", "d", "e"], outstanding: 0),
        Case(events: [(9, false, false), (0, true, false)], settled: [], outstanding: 5),
        Case(events: [(1, false, false), (1, false, false)], settled: ["a"], outstanding: 4),
        Case(events: [(2, true, true)], settled: ["a", "b"], outstanding: 3),
    ])
    func settles(_ scenario: Case) {
        var tracker = self.tracker()
        var settled: [String] = []
        for event in scenario.events {
            settled += tracker.settle(tag: event.tag, multiple: event.multiple, nack: event.nack).map(\.token)
        }
        #expect(settled == scenario.settled)
        #expect(tracker.outstanding == scenario.outstanding)
    }

    @Test func nackIsReportedAsNack() {
        var tracker = self.tracker()
        let result = tracker.settle(tag: 1, multiple: false, nack: true)
        guard case .nacked = result.first?.outcome else {
            Issue.record("expected a nack, got \(result)")
            return
        }
    }

    @Test func returnMarksTheOldestMatchingPublish() {
        var tracker = self.tracker()
        let info = ReturnInfo(replyCode: 312, replyText: "NO_ROUTE", exchange: "x", routingKey: "")
        #expect(tracker.markReturned(info) { $0 == "c" })
        #expect(!tracker.markReturned(info) { $0 == "zz" })
        let settled = tracker.settle(tag: 3, multiple: true, nack: false)
        #expect(settled.map(\.token) == ["a", "b", "c"])
        for (token, outcome) in settled {
            switch outcome {
            case .returned(let returned): #expect(token == "c" && returned == info)
            case .confirmed: #expect(token != "c")
            case .nacked: Issue.record("unexpected nack for \(token)")
            }
        }
    }

    @Test func returnedTwiceMarksTwoPublishes() {
        var tracker = ConfirmTracker<String>()
        tracker.register("same")
        tracker.register("same")
        let info = ReturnInfo(replyCode: 312, replyText: "NO_ROUTE", exchange: "x", routingKey: "")
        #expect(tracker.markReturned(info) { $0 == "same" })
        #expect(tracker.markReturned(info) { $0 == "same" })
        #expect(!tracker.markReturned(info) { $0 == "same" })
    }

    @Test func expiresOldestFirstAndIgnoresLateAcks() {
        var tracker = self.tracker()
        let expired = tracker.expire { $0 < "c" }
        #expect(expired == ["a", "b"])
        #expect(tracker.outstanding == 3)
        #expect(tracker.settle(tag: 2, multiple: true, nack: false).isEmpty)
        #expect(tracker.settle(tag: 3, multiple: false, nack: false).map(\.token) == ["c"])
        #expect(tracker.nextSequenceNumber == 6)
    }

    @Test func resetReturnsUnconfirmedAndRestartsNumbering() {
        var tracker = self.tracker()
        _ = tracker.settle(tag: 2, multiple: false, nack: false)
        #expect(tracker.reset() == ["a", "c", "d", "e"])
        #expect(tracker.isEmpty)
        #expect(tracker.register("f") == 1)
    }
}
