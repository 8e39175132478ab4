import EntitySyncProto
import Foundation

/// An entity's version and whether it is a tombstone.
public struct EntityVersion: Sendable, Hashable, CustomStringConvertible {
    public var version: UInt64
    public var deleted: Bool

    public init(version: UInt64, deleted: Bool) {
        self.version = version
        self.deleted = deleted
    }

    public var description: String { "v\(self.version)\(self.deleted ? " (deleted)" : "")" }
}
