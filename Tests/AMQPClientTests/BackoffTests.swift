import AMQPClient
import Testing

@Suite struct BackoffTests {
    let backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(5), multiplier: 2)

    @Test func growsExponentiallyThenCaps() {
        #expect(self.backoff.ceiling(attempt: 0) == .milliseconds(100))
        #expect(self.backoff.ceiling(attempt: 1) == .milliseconds(200))
        #expect(self.backoff.ceiling(attempt: 3) == .milliseconds(800))
        #expect(self.backoff.ceiling(attempt: 6) == .seconds(5))
        #expect(self.backoff.ceiling(attempt: 10_000) == .seconds(5))
        #expect(self.backoff.ceiling(attempt: -3) == .milliseconds(100))
    }

    @Test func jitterStaysBetweenHalfAndFullCeiling() {
        #expect(self.backoff.delay(attempt: 2, random: 0) == .milliseconds(200))
        #expect(self.backoff.delay(attempt: 2, random: 1) == .milliseconds(400))
        #expect(self.backoff.delay(attempt: 2, random: 0.5) == .milliseconds(300))
        for attempt in 0..<40 {
            let delay = self.backoff.delay(attempt: attempt)
            #expect(delay >= self.backoff.ceiling(attempt: attempt) / 2)
            #expect(delay <= self.backoff.ceiling(attempt: attempt))
        }
    }
}
