import AMQPModel

/// What a consumer does with a message that failed transiently, decided from the attempt count
/// in its headers. The count arrives over the wire from anyone who can publish, so it is clamped
/// here and nothing downstream can overflow on it or retry without end.
public enum RetryAttempt {
    /// What to do with a message after one more transient failure.
    public enum Decision: Sendable, Equatable {
        /// Copy it to the retry queue with `attempt` in its header and a TTL of `delay`.
        case retry(attempt: Int, delay: Duration)
        /// Dead-letter it: it has now failed `attempts` times.
        case deadLetter(attempts: Int)
    }

    /// RabbitMQ refuses a per-message TTL above 2^32 - 1 ms (its timer limit), closing the channel.
    public static let maximumExpirationMilliseconds: Int64 = 4_294_967_295

    /// Transient failures the headers record: 0 when the header is missing, not an integer, or
    /// negative; at most `Int.max - 1`, so counting one more cannot overflow.
    public static func previousFailures(in headers: AMQPTable) -> Int {
        guard let value = headers[ConsumerRunner.attemptHeader]?.intValue, value > 0 else { return 0 }
        return min(Int(clamping: value), Int.max - 1)
    }

    /// Retry with a growing delay until `maxAttempts` failures, then dead-letter; a header already
    /// at or past `maxAttempts` dead-letters at once.
    public static func decide(headers: AMQPTable, maxAttempts: Int, backoff: Backoff) -> Decision {
        let attempt = self.previousFailures(in: headers) + 1
        guard attempt < maxAttempts else { return .deadLetter(attempts: attempt) }
        return .retry(attempt: attempt, delay: backoff.ceiling(attempt: attempt - 1))
    }

    /// The AMQP `expiration` property for `delay`: whole milliseconds, 0 for a negative delay,
    /// and no more than the broker accepts.
    public static func expiration(for delay: Duration) -> String {
        let milliseconds = Backoff.seconds(delay) * 1000
        guard milliseconds.isFinite, milliseconds > 0 else { return "0" }
        return String(Int64(min(milliseconds, Double(Self.maximumExpirationMilliseconds))))
    }
}
