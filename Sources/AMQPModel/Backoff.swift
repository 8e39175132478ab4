import Foundation

/// Capped exponential backoff with full jitter, as a value so it can be tested without clocks.
public struct Backoff: Sendable, Hashable {
    public var initial: Duration
    public var maximum: Duration
    public var multiplier: Double

    public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(15), multiplier: Double = 2) {
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
    }

    /// The upper bound of the delay before retry number `attempt` (0-based), before jitter.
    public func ceiling(attempt: Int) -> Duration {
        let initialSeconds = Self.seconds(self.initial)
        let maximumSeconds = Self.seconds(self.maximum)
        // Exponent is clamped so huge attempt counts cannot overflow to infinity or NaN.
        let exponent = Double(min(max(attempt, 0), 64))
        let raw = initialSeconds * pow(self.multiplier, exponent)
        let capped = raw.isFinite ? min(raw, maximumSeconds) : maximumSeconds
        return .nanoseconds(Int64(capped * 1e9))
    }

    /// The delay before retry number `attempt`: uniformly random in [ceiling/2, ceiling], so
    /// instances that failed together do not all retry together, yet never retry at once.
    public func delay(attempt: Int, random: Double) -> Duration {
        let ceiling = Self.seconds(self.ceiling(attempt: attempt))
        let unit = min(max(random, 0), 1)
        return .nanoseconds(Int64((ceiling / 2 + ceiling / 2 * unit) * 1e9))
    }

    /// The delay before retry number `attempt`, with system randomness.
    public func delay(attempt: Int) -> Duration {
        self.delay(attempt: attempt, random: Double.random(in: 0...1))
    }

    /// A duration in seconds as a floating-point number.
    public static func seconds(_ duration: Duration) -> Double {
        let parts = duration.components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }
}
