import AMQPModel
import EntitySyncCore
import Testing

/// Issue 12 item 5: the attempt header comes from the wire and must not be trusted.
@Suite struct RetryAttemptTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var header: AMQPFieldValue?
        var maxAttempts = 5
        var expected: RetryAttempt.Decision
        var testDescription: String { self.name }
    }

    static let backoff = Backoff(initial: .seconds(1), maximum: .seconds(60), multiplier: 4)

    static let cases: [Case] = [
        Case(name: "no header: first retry", header: nil, expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "0: first retry", header: .int(0), expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "1: second retry, longer", header: .int(1), expected: .retry(attempt: 2, delay: .seconds(4))),
        Case(name: "3: last retry", header: .int(3), expected: .retry(attempt: 4, delay: .seconds(60))),
        Case(name: "4: the fifth failure dead-letters", header: .int(4), expected: .deadLetter(attempts: 5)),
        Case(name: "5, at maxAttempts: dead-letters at once", header: .int(5), expected: .deadLetter(attempts: 6)),
        Case(name: "1000: dead-letters at once", header: .int(1000), expected: .deadLetter(attempts: 1001)),
        // The issue's examples: Int64.max trapped on `+ 1`; a negative count retried without end.
        Case(name: "Int64.max does not overflow", header: .int(.max), expected: .deadLetter(attempts: Int.max)),
        Case(name: "Int64.max - 1", header: .int(.max - 1), expected: .deadLetter(attempts: Int.max)),
        Case(name: "-1 counts as none", header: .int(-1), expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "Int64.min counts as none", header: .int(.min), expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "a string counts as none", header: .string("4"), expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "a double counts as none", header: .double(4), expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "a table counts as none", header: .table(["attempt": .int(4)]), expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "an array counts as none", header: .array([.int(4)]), expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "a timestamp counts as none", header: .timestamp(.max), expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "void counts as none", header: .void, expected: .retry(attempt: 1, delay: .seconds(1))),
        Case(name: "maxAttempts 1: never retries", header: nil, maxAttempts: 1, expected: .deadLetter(attempts: 1)),
        Case(name: "maxAttempts 0: never retries", header: .int(-1), maxAttempts: 0, expected: .deadLetter(attempts: 1)),
        Case(name: "maxAttempts Int.max, header Int64.max", header: .int(.max), maxAttempts: .max,
             expected: .deadLetter(attempts: Int.max)),
        Case(name: "maxAttempts Int.max, header Int64.max - 2", header: .int(.max - 2), maxAttempts: .max,
             expected: .retry(attempt: Int.max - 1, delay: .seconds(60))),
    ]

    @Test(arguments: cases)
    func decide(_ testCase: Case) {
        var headers: AMQPTable = ["other": .string("kept")]
        if let header = testCase.header { headers[ConsumerRunner.attemptHeader] = header }
        #expect(RetryAttempt.decide(headers: headers, maxAttempts: testCase.maxAttempts, backoff: Self.backoff) == testCase.expected)
    }

    @Test(arguments: [
        (AMQPFieldValue?.none, 0), (.int(-1), 0), (.int(.min), 0), (.int(0), 0), (.int(7), 7),
        (.int(.max), Int.max - 1), (.string("7"), 0), (.bool(true), 0), (.bytes([7]), 0),
    ] as [(AMQPFieldValue?, Int)])
    func previousFailures(_ header: AMQPFieldValue?, _ expected: Int) {
        var headers: AMQPTable = [:]
        headers[ConsumerRunner.attemptHeader] = header
        #expect(RetryAttempt.previousFailures(in: headers) == expected)
    }

    @Test(arguments: [
        (Duration.seconds(1), "1000"), (.milliseconds(1500), "1500"), (.zero, "0"), (.seconds(-5), "0"),
        (.nanoseconds(1), "0"), (.seconds(4_294_967), "4294967000"), (.seconds(4_294_968), "4294967295"),
        (.seconds(Int64.max), "4294967295"), (.seconds(Int64.min), "0"),
    ] as [(Duration, String)])
    func expiration(_ delay: Duration, _ expected: String) {
        #expect(RetryAttempt.expiration(for: delay) == expected)
    }

    /// Whatever a message arrives with, following the decisions (the consumer writes the new
    /// attempt back into the header) dead-letters it within `maxAttempts` failures.
    @Test func everyHeaderEndsInTheDeadLetterQueue() {
        let starts: [AMQPFieldValue?] = [nil, .int(.min), .int(-1), .int(0), .int(3), .int(.max), .string("x"), .table([:])]
        for start in starts {
            for maxAttempts in [-1, 0, 1, 2, 5, 20] {
                var headers: AMQPTable = [:]
                headers[ConsumerRunner.attemptHeader] = start
                var failures = 0
                while case .retry(let attempt, let delay) = RetryAttempt.decide(headers: headers, maxAttempts: maxAttempts,
                                                                                  backoff: Self.backoff) {
                    failures += 1
                    #expect(attempt >= 1 && attempt < maxAttempts)
                    #expect(delay > .zero && delay <= Self.backoff.maximum)
                    headers[ConsumerRunner.attemptHeader] = .int(Int64(attempt))
                    guard failures <= max(maxAttempts, 1) else {
                        Issue.record("header \(String(describing: start)), maxAttempts \(maxAttempts): still retrying")
                        break
                    }
                }
            }
        }
    }
}
