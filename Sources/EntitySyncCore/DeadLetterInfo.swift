/// One message in a dead-letter queue, as far as it can be read.
public struct DeadLetterInfo: Sendable, Equatable {
    public var queue: String
    public var kind: EntityKind
    /// Nil when the body could not be decoded.
    public var entityID: String?
    public var version: UInt64?
    public var messageID: String?
    public var reason: String
    public var contentType: String?
    public var size: Int
}
