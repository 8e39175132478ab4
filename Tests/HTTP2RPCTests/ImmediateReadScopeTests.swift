@testable import HTTP2RPC
import Testing

/// The values calls from one socket read share: made once per key, ended once, when the scope ends.
@Suite struct ImmediateReadScopeTests {
    final class Counted {
        let name: String
        var ended = 0

        init(_ name: String) {
            self.name = name
        }
    }

    @Test func aValueIsMadeOncePerKeyAndEndedOnceWithTheScope() {
        let scope = ImmediateReadScope()
        let first = ImmediateReadScope.Key(), second = ImmediateReadScope.Key()
        var made: [Counted] = []
        func value(_ key: ImmediateReadScope.Key, _ name: String) -> Counted {
            scope.value(for: key, make: { () -> Counted in
                let value = Counted(name)
                made.append(value)
                return value
            }, end: { $0.ended += 1 })
        }
        let a = value(first, "a")
        #expect(value(first, "again") === a)
        let b = value(second, "b")
        #expect(b !== a && made.map(\.name) == ["a", "b"])
        scope.end()
        #expect(made.map(\.ended) == [1, 1])
        scope.end()
        #expect(made.map(\.ended) == [1, 1], "a scope ends what it holds once")
        // The next read's calls start afresh.
        let c = value(first, "c")
        #expect(c !== a && made.count == 3)
        scope.end()
        #expect(made.map(\.ended) == [1, 1, 1])
    }

    @Test func aValueThatCannotBeMadeIsNotKept() {
        struct Refused: Error {}
        let scope = ImmediateReadScope()
        let key = ImmediateReadScope.Key()
        #expect(throws: Refused.self) {
            _ = try scope.value(for: key, make: { () throws -> Counted in throw Refused() }, end: { _ in Issue.record("ended a value never made") })
        }
        let made = scope.value(for: key, make: { Counted("later") }, end: { $0.ended += 1 })
        #expect(made.name == "later")
        scope.end()
        #expect(made.ended == 1)
    }
}
