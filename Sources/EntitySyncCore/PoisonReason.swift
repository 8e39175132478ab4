import AMQPModel
import EntitySyncProto
import Foundation
import SwiftProtobuf

/// Why a message can never be applied: it goes to the dead-letter queue at once, with this reason.
public struct PoisonReason: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case unsupportedContentType = "unsupported-content-type"
        case undecodable
        case invalid
    }
    public var kind: Kind
    public var detail: String
    public var description: String { "\(self.kind.rawValue): \(self.detail)" }
}
