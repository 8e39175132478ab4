import AMQPModel
import EntitySyncProto
import Foundation
import SwiftProtobuf

/// A change event that decoded and passed validation.
public struct ValidatedChange: Sendable, Equatable {
    public var kind: EntityKind
    public var entityID: String
    public var version: UInt64
    public var isDelete: Bool
    public var change: EntityChange
}
