import EntitySyncProto
import Foundation

/// A change event waiting in the producer's outbox to be published.
public struct OutboxRecord: Sendable, Equatable {
    public var sequence: Int64
    public var kind: EntityKind
    public var entityID: String
    public var version: UInt64
    public var messageID: String
    /// The serialized `EntityChange`.
    public var payload: [UInt8]

    public init(sequence: Int64, kind: EntityKind, entityID: String, version: UInt64, messageID: String, payload: [UInt8]) {
        self.sequence = sequence
        self.kind = kind
        self.entityID = entityID
        self.version = version
        self.messageID = messageID
        self.payload = payload
    }
}
