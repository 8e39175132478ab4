import EntitySyncProto
import SwiftProtobuf

/// A decoder of `EntityChange` in protobuf's binary form for the shape producers write: each
/// field at most once (a group's members repeated), no unknown fields, no user attributes,
/// valid UTF-8. Anything else answers nil, and the caller decodes with swift-protobuf, which
/// gives the same message or the error; so for every input this is swift-protobuf's answer or
/// none (a property the tests check on random and corrupted messages).
///
/// Why: swift-protobuf's decoding goes through generic paths that look up type metadata for
/// every nested message and enum field; it was a quarter of a consumer's CPU during catch-up.
enum ChangeWire {
    static func decode(_ body: [UInt8]) -> EntityChange? {
        body.withUnsafeBufferPointer { buffer -> EntityChange? in
            var reader = Reader(buffer)
            return reader.change()
        }
    }

    /// What a change's AMQP message carries besides its body, read without decoding the entity
    /// state: the outbox relay publishes stored changes and decoded each one only for these.
    struct Envelope: Equatable {
        var messageID = ""
        var entityType = 0
        var entityID = ""
        var version: UInt64 = 0
        var producer = ""
        /// `occurred_at`'s seconds, if it is set.
        var occurredAtSeconds: Int64?
    }

    /// The envelope of a change in the shape producers write; nil for anything else (the
    /// caller decodes it whole).
    static func envelope(_ body: [UInt8]) -> Envelope? {
        body.withUnsafeBufferPointer { buffer -> Envelope? in
            var reader = Reader(buffer)
            return reader.envelope()
        }
    }

    /// Reads one message's fields; every failure is nil (the caller falls back).
    private struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var position: Int
        let end: Int

        init(_ bytes: UnsafeBufferPointer<UInt8>) {
            self.init(bytes, from: 0, to: bytes.count)
        }

        private init(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int) {
            self.bytes = bytes
            self.position = start
            self.end = end
        }

        mutating func varint() -> UInt64? {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while self.position < self.end {
                let byte = self.bytes[self.position]
                self.position += 1
                // The tenth byte may carry only the top bit of a 64-bit value.
                if shift == 63 && byte > 1 { return nil }
                value |= UInt64(byte & 0x7f) << shift
                if byte & 0x80 == 0 { return value }
                shift += 7
            }
            return nil
        }

        /// The next field's number and wire type, or nil on bad input. Every field read here
        /// has a one-byte tag; a tag padded to more bytes is left to swift-protobuf, which
        /// rejects some such paddings.
        mutating func tag() -> (field: UInt64, wireType: UInt64)? {
            guard self.position < self.end else { return nil }
            let tag = self.bytes[self.position]
            guard tag & 0x80 == 0, tag >> 3 > 0 else { return nil }
            self.position += 1
            return (UInt64(tag >> 3), UInt64(tag & 7))
        }

        var done: Bool { self.position == self.end }

        /// The next field of a message whose fields are numbered up to `highest`, each once
        /// except `repeating` (0: none). A repeat of a singular field means merging or replacing,
        /// which is left to swift-protobuf, as are unknown fields.
        mutating func field(highest: UInt64, seen: inout UInt16, repeating: UInt64 = 0) -> (field: UInt64, wireType: UInt64)? {
            guard let (field, wireType) = self.tag(), field <= highest else { return nil }
            guard field == repeating || seen & (1 << field) == 0 else { return nil }
            seen |= 1 << field
            return (field, wireType)
        }

        /// A length-delimited field's contents as a reader of their own.
        mutating func nested() -> Reader? {
            // swift-protobuf refuses lengths of 2^31 - 1 and above.
            guard let length = self.varint(), length < 0x7fff_ffff, length <= UInt64(self.end - self.position) else { return nil }
            let start = self.position
            self.position += Int(length)
            return Reader(self.bytes, from: start, to: self.position)
        }

        mutating func string() -> String? {
            guard let field = self.nested() else { return nil }
            let text = UnsafeBufferPointer(rebasing: self.bytes[field.position ..< field.end])
            // ASCII is valid UTF-8 as it stands: `String(validating:)` runs unspecialised (a
            // metadata lookup per string, 3% of a consumer's CPU), so it is kept for the rest.
            if text.allSatisfy({ $0 < 0x80 }) { return String(decoding: text, as: UTF8.self) }
            return String(validating: text, as: UTF8.self)
        }

        /// An enum value as swift-protobuf reads it: the varint truncated to 32 bits.
        mutating func enumValue() -> Int? {
            self.varint().map { Int(Int32(truncatingIfNeeded: $0)) }
        }

        mutating func change() -> EntityChange? {
            var change = EntityChange()
            var seen: UInt16 = 0
            while !self.done {
                guard let (field, wireType) = self.field(highest: 9, seen: &seen) else { return nil }
                switch (field, wireType) {
                case (1, 2): guard let value = self.string() else { return nil }; change.messageID = value
                case (2, 0):
                    guard let raw = self.enumValue(), let value = Entitysync_V1_EntityType(rawValue: raw) else { return nil }
                    change.entityType = value
                case (3, 2): guard let value = self.string() else { return nil }; change.entityID = value
                case (4, 0): guard let value = self.varint() else { return nil }; change.version = value
                case (5, 0):
                    guard let raw = self.enumValue(), let value = Entitysync_V1_Operation(rawValue: raw) else { return nil }
                    change.operation = value
                case (6, 2):
                    // A user and a group both present: the later one wins in swift-protobuf.
                    guard seen & (1 << 7) == 0, var fields = self.nested(), let user = fields.user() else { return nil }
                    change.user = user
                case (7, 2):
                    guard seen & (1 << 6) == 0, var fields = self.nested(), let group = fields.group() else { return nil }
                    change.group = group
                case (8, 2): guard var fields = self.nested(), let value = fields.timestamp() else { return nil }; change.occurredAt = value
                case (9, 2): guard let value = self.string() else { return nil }; change.producer = value
                default: return nil
                }
            }
            return change
        }

        mutating func envelope() -> Envelope? {
            var envelope = Envelope()
            var seen: UInt16 = 0
            while !self.done {
                guard let (field, wireType) = self.field(highest: 9, seen: &seen) else { return nil }
                switch (field, wireType) {
                case (1, 2): guard let value = self.string() else { return nil }; envelope.messageID = value
                case (2, 0): guard let value = self.enumValue() else { return nil }; envelope.entityType = value
                case (3, 2): guard let value = self.string() else { return nil }; envelope.entityID = value
                case (4, 0): guard let value = self.varint() else { return nil }; envelope.version = value
                case (5, 0): guard self.varint() != nil else { return nil }
                // The state is skipped whole: only its framing is checked.
                case (6, 2), (7, 2): guard seen & 0b1100_0000 != 0b1100_0000, self.nested() != nil else { return nil }
                case (8, 2):
                    guard var fields = self.nested(), let value = fields.timestamp() else { return nil }
                    envelope.occurredAtSeconds = value.seconds
                case (9, 2): guard let value = self.string() else { return nil }; envelope.producer = value
                default: return nil
                }
            }
            return envelope
        }

        mutating func user() -> User? {
            var user = User()
            var seen: UInt16 = 0
            while !self.done {
                // Field 5, the attributes map, is left to swift-protobuf (no case below).
                guard let (field, wireType) = self.field(highest: 7, seen: &seen) else { return nil }
                switch (field, wireType) {
                case (1, 2): guard let value = self.string() else { return nil }; user.id = value
                case (2, 2): guard let value = self.string() else { return nil }; user.name = value
                case (3, 2): guard let value = self.string() else { return nil }; user.email = value
                case (4, 0):
                    guard let raw = self.enumValue(), let value = Entitysync_V1_UserStatus(rawValue: raw) else { return nil }
                    user.status = value
                case (6, 0): guard let value = self.varint() else { return nil }; user.version = value
                case (7, 2): guard var fields = self.nested(), let value = fields.timestamp() else { return nil }; user.updatedAt = value
                default: return nil
                }
            }
            return user
        }

        mutating func group() -> Group? {
            var group = Group()
            var seen: UInt16 = 0
            while !self.done {
                guard let (field, wireType) = self.field(highest: 6, seen: &seen, repeating: 4) else { return nil }
                switch (field, wireType) {
                case (1, 2): guard let value = self.string() else { return nil }; group.id = value
                case (2, 2): guard let value = self.string() else { return nil }; group.name = value
                case (3, 2): guard let value = self.string() else { return nil }; group.description_p = value
                case (4, 2): guard let value = self.string() else { return nil }; group.memberIds.append(value)
                case (5, 0): guard let value = self.varint() else { return nil }; group.version = value
                case (6, 2): guard var fields = self.nested(), let value = fields.timestamp() else { return nil }; group.updatedAt = value
                default: return nil
                }
            }
            return group
        }

        mutating func timestamp() -> Google_Protobuf_Timestamp? {
            var timestamp = Google_Protobuf_Timestamp()
            var seen: UInt16 = 0
            while !self.done {
                guard let (field, wireType) = self.field(highest: 2, seen: &seen), wireType == 0,
                      let value = self.varint() else { return nil }
                if field == 1 {
                    timestamp.seconds = Int64(bitPattern: value)
                } else {
                    timestamp.nanos = Int32(truncatingIfNeeded: value)
                }
            }
            return timestamp
        }
    }
}
