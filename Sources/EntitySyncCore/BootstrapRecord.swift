import EntitySyncProto
import Foundation

/// A replica store's record of loading the producer's snapshot into it, shared by every
/// instance of the group.
public struct BootstrapRecord: Sendable, Equatable {
    /// When the latest load started, and by which instance.
    public var startedAt: Date
    public var startedBy: String
    /// Loads started so far: more than one means one was cut short or instances raced (harmless).
    public var attempts: Int
    /// The last time a loading instance showed it was alive; a stale one means the load was abandoned.
    public var heartbeatAt: Date
    public var completedAt: Date?
    public var completedBy: String?
    /// Per entity type, what the snapshot that completed the bootstrap held (empty until then).
    public var marks: [EntityKind: SnapshotMark]

    public init(startedAt: Date, startedBy: String, attempts: Int, heartbeatAt: Date, completedAt: Date? = nil,
                completedBy: String? = nil, marks: [EntityKind: SnapshotMark] = [:]) {
        self.startedAt = startedAt
        self.startedBy = startedBy
        self.attempts = attempts
        self.heartbeatAt = heartbeatAt
        self.completedAt = completedAt
        self.completedBy = completedBy
        self.marks = marks
    }

    /// True once a load has run to the snapshot's end.
    public var isCompleted: Bool { self.completedAt != nil }

    /// A load completed and its snapshot covered each of `kinds` (a group that later consumes
    /// another entity type has none of that type's history yet).
    public func covers(_ kinds: Set<EntityKind>) -> Bool { self.isCompleted && kinds.isSubset(of: self.marks.keys) }
}
