import EntitySyncProto
import Foundation

/// What one entity type of a producer's snapshot held: its entities (tombstones included) and
/// the highest version among them.
public struct SnapshotMark: Sendable, Hashable {
    public var entities: Int
    public var highestVersion: UInt64

    public init(entities: Int = 0, highestVersion: UInt64 = 0) {
        self.entities = entities
        self.highestVersion = highestVersion
    }
}
