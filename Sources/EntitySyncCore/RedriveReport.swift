/// What a re-drive did with the dead letters it took.
public struct RedriveReport: Sendable, Equatable {
    public var applied = 0
    public var stale = 0
    public var failed = 0
    /// The first `failureDetailLimit` failures, with their new reason.
    public var failures: [DeadLetterInfo] = []

    public static let failureDetailLimit = 100

    public init() {}
}
