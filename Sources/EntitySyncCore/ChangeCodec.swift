import AMQPModel
import EntitySyncProto
import Foundation
import SwiftProtobuf

/// Encodes change events for publishing and decodes and validates them on the consumer side.
public enum ChangeCodec {
    public static let protobufContentType = "application/x-protobuf"
    public static let jsonContentType = "application/json"
    public static let messageType = "entitysync.v1.EntityChange"

    /// The protobuf message for a change (message id from the change, persistent).
    public static func message(for change: EntityChange, serialized: [UInt8]? = nil) throws -> OutgoingMessage {
        let body: [UInt8] = try serialized ?? change.serializedBytes()
        return self.message(body: body, envelope: ChangeWire.Envelope(
            messageID: change.messageID, entityType: change.entityType.rawValue, entityID: change.entityID,
            version: change.version, producer: change.producer,
            occurredAtSeconds: change.hasOccurredAt ? change.occurredAt.seconds : nil))
    }

    /// The protobuf message for a serialized change, as `message(for:)` makes it; the entity
    /// state is not decoded unless the change is in a shape producers do not write.
    public static func message(serialized body: [UInt8]) throws -> OutgoingMessage {
        if let envelope = ChangeWire.envelope(body) { return self.message(body: body, envelope: envelope) }
        return try self.message(for: EntityChange(serializedBytes: body), serialized: body)
    }

    private static func message(body: [UInt8], envelope: ChangeWire.Envelope) -> OutgoingMessage {
        let kind = Entitysync_V1_EntityType(rawValue: envelope.entityType).flatMap(EntityKind.init)
        var message = OutgoingMessage(body: body, contentType: Self.protobufContentType, messageID: envelope.messageID,
                                      headers: [
                                          "entity-type": .string(kind?.rawValue ?? "unknown"),
                                          "entity-id": .string(envelope.entityID),
                                          "version": .int(Int64(clamping: envelope.version)),
                                      ],
                                      type: Self.messageType, appID: envelope.producer.isEmpty ? nil : envelope.producer)
        if let seconds = envelope.occurredAtSeconds { message.properties.timestamp = UInt64(max(0, seconds)) }
        return message
    }

    /// Decodes a delivery's body by its content type and validates it; `expected` is the entity
    /// type of the queue it came from.
    public static func decode(body: [UInt8], contentType: String?, expected: EntityKind?) -> Result<ValidatedChange, PoisonReason> {
        let change: EntityChange
        // The exact type every EntitySync producer sends skips the parsing (Foundation's trimming
        // showed in catch-up profiles).
        let mediaType = contentType == Self.protobufContentType ? Self.protobufContentType
            : contentType?.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        do {
            switch mediaType {
            case Self.protobufContentType:
                change = try ChangeWire.decode(body) ?? EntityChange(serializedBytes: body)
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

    /// The highest version a consumer accepts: stores keep versions as signed 64-bit integers.
    public static let maximumVersion = UInt64(Int64.max)
    /// The range of a `google.protobuf.Timestamp`: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
    public static let timestampSeconds: ClosedRange<Int64> = -62_135_596_800 ... 253_402_300_799

    /// Checks every field of an event against what a store can hold and a producer can send; any
    /// failure is poison naming the field and its limit. Deliberately looser than `DraftValidation`
    /// on content (email form, blank names, an unspecified status): events that were valid when
    /// produced, or come from producers in other languages, must still apply.
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
        do {
            try DraftValidation.validateID(change.entityID, field: "entity_id")
        } catch {
            return invalid(error.message)
        }
        guard change.version > 0 else { return invalid("version must be at least 1") }
        guard change.version <= Self.maximumVersion else {
            return invalid("version \(change.version) is too large; at most \(Self.maximumVersion) (Int64.max) is allowed")
        }
        let isDelete: Bool
        switch change.operation {
        case .delete: isDelete = true
        case .upsert: isDelete = false
        default: return invalid("unknown operation \(change.operation.rawValue)")
        }
        do {
            // Before comparing, so a reason never quotes an id of unbounded length.
            switch change.state {
            case .user(let user)?: try DraftValidation.validateID(user.id, field: "user.id")
            case .group(let group)?: try DraftValidation.validateID(group.id, field: "group.id")
            case nil: break
            }
        } catch {
            return invalid(error.message)
        }
        switch (kind, change.state) {
        case (.user, .user(let user)?):
            guard user.id == change.entityID else { return invalid("user.id '\(user.id)' differs from entity_id '\(change.entityID)'") }
        case (.group, .group(let group)?):
            guard group.id == change.entityID else { return invalid("group.id '\(group.id)' differs from entity_id '\(change.entityID)'") }
        case (_, nil) where isDelete:
            break
        default:
            return invalid(isDelete ? "a delete of a \(kind.rawValue) carries another entity type's state"
                                    : "an upsert of a \(kind.rawValue) must carry the \(kind.rawValue)'s state")
        }
        do {
            try self.validateFields(change)
        } catch {
            return invalid(error.message)
        }
        return .success(ValidatedChange(kind: kind, entityID: change.entityID, version: change.version,
                                        isDelete: isDelete, change: change))
    }

    /// Sizes, ranges and enum values of the envelope and the state it carries (ids were checked).
    private static func validateFields(_ change: EntityChange) throws(SyncError) {
        try DraftValidation.validateText(change.messageID, field: "message_id")
        try DraftValidation.validateText(change.producer, field: "producer")
        if change.hasOccurredAt { try self.validateTimestamp(change.occurredAt, field: "occurred_at") }
        switch change.state {
        case .user(let user)?:
            try DraftValidation.validateText(user.name, field: "user.name")
            try DraftValidation.validateText(user.email, field: "user.email")
            if case .UNRECOGNIZED(let value) = user.status {
                throw SyncError(.invalidArgument, "user.status \(value) is not a known status; "
                                + "allowed are 0 (unspecified), 1 (active) and 2 (disabled)")
            }
            try DraftValidation.validateAttributes(user.attributes, field: "user.attributes")
            try self.validateStateVersion(user.version, field: "user.version")
            if user.hasUpdatedAt { try self.validateTimestamp(user.updatedAt, field: "user.updated_at") }
        case .group(let group)?:
            try DraftValidation.validateText(group.name, field: "group.name")
            try DraftValidation.validateText(group.description_p, field: "group.description")
            try DraftValidation.validateMembers(group.memberIds, field: "group.member_ids")
            try self.validateStateVersion(group.version, field: "group.version")
            if group.hasUpdatedAt { try self.validateTimestamp(group.updatedAt, field: "group.updated_at") }
        case nil:
            break
        }
    }

    /// The store keeps the envelope's version, but a state's own version must not be one that
    /// could trap wherever it is read as a signed integer; 0 means absent.
    private static func validateStateVersion(_ version: UInt64, field: String) throws(SyncError) {
        guard version <= Self.maximumVersion else {
            throw SyncError(.invalidArgument, "\(field) \(version) is too large; at most \(Self.maximumVersion) (Int64.max) is allowed")
        }
    }

    private static func validateTimestamp(_ timestamp: Google_Protobuf_Timestamp, field: String) throws(SyncError) {
        guard Self.timestampSeconds.contains(timestamp.seconds) else {
            throw SyncError(.invalidArgument, "\(field).seconds \(timestamp.seconds) is out of range; it must be "
                            + "\(Self.timestampSeconds.lowerBound) to \(Self.timestampSeconds.upperBound) (years 1 to 9999)")
        }
        guard (0 ... 999_999_999).contains(timestamp.nanos) else {
            throw SyncError(.invalidArgument, "\(field).nanos \(timestamp.nanos) is out of range; it must be 0 to 999999999")
        }
    }
}
