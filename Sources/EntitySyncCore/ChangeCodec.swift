import AMQPClient
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

/// A change event that decoded and passed validation.
public struct ValidatedChange: Sendable, Equatable {
    public var kind: EntityKind
    public var entityID: String
    public var version: UInt64
    public var isDelete: Bool
    public var change: EntityChange
}

/// Encodes change events for publishing and decodes and validates them on the consumer side.
public enum ChangeCodec {
    public static let protobufContentType = "application/x-protobuf"
    public static let jsonContentType = "application/json"
    public static let messageType = "entitysync.v1.EntityChange"

    /// The protobuf message for a change (message id from the change, persistent).
    public static func message(for change: EntityChange, serialized: [UInt8]? = nil) throws -> OutgoingMessage {
        let body: [UInt8] = try serialized ?? change.serializedBytes()
        var message = OutgoingMessage(body: body, contentType: Self.protobufContentType, messageID: change.messageID,
                                      headers: [
                                          "entity-type": .string(EntityKind(change.entityType)?.rawValue ?? "unknown"),
                                          "entity-id": .string(change.entityID),
                                          "version": .int(Int64(clamping: change.version)),
                                      ],
                                      type: Self.messageType, appID: change.producer.isEmpty ? nil : change.producer)
        if change.hasOccurredAt { message.properties.timestamp = UInt64(max(0, change.occurredAt.seconds)) }
        return message
    }

    /// Decodes a delivery's body by its content type and validates it; `expected` is the entity
    /// type of the queue it came from.
    public static func decode(body: [UInt8], contentType: String?, expected: EntityKind?) -> Result<ValidatedChange, PoisonReason> {
        let change: EntityChange
        let mediaType = contentType?.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        do {
            switch mediaType {
            case Self.protobufContentType:
                change = try EntityChange(serializedBytes: body)
            case Self.jsonContentType:
                change = try EntityChange(jsonUTF8Data: Data(body))
            default:
                return .failure(PoisonReason(kind: .unsupportedContentType, detail:
                    "content type '\(contentType ?? "(none)")' is not \(Self.protobufContentType) or \(Self.jsonContentType)"))
            }
        } catch {
            return .failure(PoisonReason(kind: .undecodable, detail: "the body is not a valid \(Self.messageType) "
                                         + "in \(mediaType ?? "?"): \(error)"))
        }
        return self.validate(change, expected: expected)
    }

    public static func validate(_ change: EntityChange, expected: EntityKind?) -> Result<ValidatedChange, PoisonReason> {
        func invalid(_ detail: String) -> Result<ValidatedChange, PoisonReason> {
            .failure(PoisonReason(kind: .invalid, detail: detail))
        }
        guard let kind = EntityKind(change.entityType) else {
            return invalid("unknown entity type \(change.entityType.rawValue)")
        }
        if let expected, kind != expected {
            return invalid("a \(kind.rawValue) event on a \(expected.rawValue) queue")
        }
        guard !change.entityID.isEmpty else { return invalid("entity_id is empty") }
        guard change.version > 0 else { return invalid("version must be at least 1") }
        switch change.operation {
        case .delete:
            return .success(ValidatedChange(kind: kind, entityID: change.entityID, version: change.version,
                                            isDelete: true, change: change))
        case .upsert:
            switch (kind, change.state) {
            case (.user, .user(let user)?):
                guard user.id == change.entityID else { return invalid("user.id '\(user.id)' differs from entity_id '\(change.entityID)'") }
            case (.group, .group(let group)?):
                guard group.id == change.entityID else { return invalid("group.id '\(group.id)' differs from entity_id '\(change.entityID)'") }
            default:
                return invalid("an upsert of a \(kind.rawValue) must carry the \(kind.rawValue)'s state")
            }
            return .success(ValidatedChange(kind: kind, entityID: change.entityID, version: change.version,
                                            isDelete: false, change: change))
        default:
            return invalid("unknown operation \(change.operation.rawValue)")
        }
    }
}
