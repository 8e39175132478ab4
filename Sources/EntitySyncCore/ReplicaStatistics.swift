import EntitySyncProto
import Foundation

/// What a consumer group knows about one entity type.
public struct ReplicaStatistics: Sendable, Equatable {
    public var entities: Int = 0
    public var highestVersion: UInt64 = 0
    public var applied: Int = 0
    public var stale: Int = 0
    public var deadLettered: Int = 0
    public var lastAppliedAt: Date?

    public init() {}
}
