import AMQPModel
import Foundation

/// How a consumer group's store came to hold what it holds, as read from the store (so every
/// instance of the group reports the same).
public enum BootstrapState: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// A load of the producer's snapshot ran to its end; the queues have kept the store current since.
    case complete
    /// No snapshot load ever started: everything came through the group's queues. Right when the
    /// queues hold the group's whole history, wrong for a rebuilt store or a group added later.
    case queuesOnly = "queues-only"
    /// A load started, is not completed, and its instance showed it was alive recently.
    case inProgress = "in-progress"
    /// A load started and was abandoned part-way (its heartbeat is stale): entities may be missing
    /// until an instance started with a producer address loads the snapshot again.
    case incomplete

    /// Reads the state from a store's record; a load whose heartbeat is older than `staleAfter`
    /// counts as abandoned.
    public static func assess(_ record: BootstrapRecord?, now: Date = Date(), staleAfter: Duration) -> BootstrapState {
        guard let record else { return .queuesOnly }
        if record.isCompleted { return .complete }
        let silence = now.timeIntervalSince(record.heartbeatAt)
        return silence <= Backoff.seconds(staleAfter) ? .inProgress : .incomplete
    }

    /// Words for people (logs, `ctl status`).
    public var description: String {
        switch self {
        case .complete: "complete"
        case .queuesOnly: "from queues only"
        case .inProgress: "in progress"
        case .incomplete: "incomplete"
        }
    }
}
