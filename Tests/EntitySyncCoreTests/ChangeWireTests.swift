@testable import EntitySyncCore
import EntitySyncProto
import SwiftProtobuf
import Testing

/// The fast decoder answers exactly what swift-protobuf answers, or nothing.
@Suite struct ChangeWireTests {
    private static let alphabet: [String] = ["a", "Z", "0", "-", "_", "@", ".", " ", "é", "ß", "日", "本", "😀", "\u{0}", "\n"]

    private static func text(_ rng: inout SplitMix64) -> String {
        let length = Int.random(in: 0...(Bool.random(using: &rng) ? 4 : 40), using: &rng)
        return (0..<length).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] }.joined()
    }

    private static func number(_ rng: inout SplitMix64) -> UInt64 {
        switch Int.random(in: 0..<4, using: &rng) {
        case 0: 0
        case 1: UInt64.random(in: 1...300, using: &rng)
        case 2: UInt64.max - UInt64.random(in: 0...3, using: &rng)
        default: rng.next()
        }
    }

    private static func enumValue(_ rng: inout SplitMix64) -> Int {
        Bool.random(using: &rng) ? Int.random(in: 0...3, using: &rng) : Int(Int32(truncatingIfNeeded: rng.next()))
    }

    private static func timestamp(_ rng: inout SplitMix64) -> Google_Protobuf_Timestamp {
        var timestamp = Google_Protobuf_Timestamp()
        timestamp.seconds = Int64(bitPattern: number(&rng))
        timestamp.nanos = Int32(truncatingIfNeeded: number(&rng))
        return timestamp
    }

    private static func change(_ rng: inout SplitMix64, attributes: Bool) -> EntityChange {
        var change = EntityChange()
        if Bool.random(using: &rng) { change.messageID = text(&rng) }
        change.entityType = Entitysync_V1_EntityType(rawValue: enumValue(&rng)) ?? .unspecified
        change.entityID = text(&rng)
        change.version = number(&rng)
        change.operation = Entitysync_V1_Operation(rawValue: enumValue(&rng)) ?? .unspecified
        switch Int.random(in: 0..<3, using: &rng) {
        case 0:
            var user = User()
            user.id = text(&rng)
            user.name = text(&rng)
            user.email = text(&rng)
            user.status = Entitysync_V1_UserStatus(rawValue: enumValue(&rng)) ?? .unspecified
            if attributes { user.attributes = [text(&rng): text(&rng)] }
            user.version = number(&rng)
            if Bool.random(using: &rng) { user.updatedAt = timestamp(&rng) }
            change.user = user
        case 1:
            var group = Group()
            group.id = text(&rng)
            group.name = text(&rng)
            group.description_p = text(&rng)
            group.memberIds = (0..<Int.random(in: 0...5, using: &rng)).map { _ in text(&rng) }
            group.version = number(&rng)
            if Bool.random(using: &rng) { group.updatedAt = timestamp(&rng) }
            change.group = group
        default:
            break
        }
        if Bool.random(using: &rng) { change.occurredAt = timestamp(&rng) }
        if Bool.random(using: &rng) { change.producer = text(&rng) }
        return change
    }

    @Test func decodesWhatSwiftProtobufEncodes() throws {
        var rng = SplitMix64(seed: 1)
        for _ in 0..<5000 {
            let change = Self.change(&rng, attributes: false)
            let bytes: [UInt8] = try change.serializedBytes()
            #expect(ChangeWire.decode(bytes) == change, "\(bytes)")
        }
    }

    /// Random damage to valid messages: whenever the fast decoder answers, swift-protobuf
    /// decodes the same bytes to the same message.
    @Test func neverAnswersOtherwiseThanSwiftProtobufOnDamagedMessages() throws {
        var rng = SplitMix64(seed: 2)
        var answered = 0
        var refused = 0
        for _ in 0..<30000 {
            var bytes: [UInt8] = try Self.change(&rng, attributes: Int.random(in: 0..<10, using: &rng) == 0).serializedBytes()
            for _ in 0..<Int.random(in: 1...3, using: &rng) where !bytes.isEmpty {
                let at = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<5, using: &rng) {
                case 0: bytes[at] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng))
                case 1: bytes.removeSubrange(at...)
                case 2: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: at)
                case 3: bytes[at] = UInt8.random(in: 0...255, using: &rng)
                default: bytes.append(contentsOf: bytes[at...].prefix(12))
                }
            }
            if let fast = ChangeWire.decode(bytes) {
                answered += 1
                let reference = try? EntityChange(serializedBytes: bytes)
                #expect(reference == fast, "\(bytes)")
            } else {
                refused += 1
            }
        }
        // Both outcomes are exercised, or the property says little.
        #expect(answered > 1000 && refused > 1000)
    }

    /// The relay's message from stored bytes, read without decoding the state, is the one a
    /// full decode gives; on damaged bytes too, whenever both read them.
    @Test func aStoredChangesMessageIsTheDecodedChangesMessage() throws {
        var rng = SplitMix64(seed: 3)
        var envelopes = 0
        for index in 0..<20000 {
            var bytes: [UInt8] = try Self.change(&rng, attributes: Int.random(in: 0..<4, using: &rng) == 0).serializedBytes()
            if index % 2 == 1 && !bytes.isEmpty {
                let at = Int.random(in: 0..<bytes.count, using: &rng)
                bytes[at] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng))
            }
            guard let reference = try? EntityChange(serializedBytes: bytes) else { continue }
            if ChangeWire.envelope(bytes) != nil { envelopes += 1 }
            var fast = try ChangeCodec.message(serialized: bytes)
            let full = try ChangeCodec.message(for: reference, serialized: bytes)
            // Without occurred_at both stamp the current time, which may tick between them.
            if !reference.hasOccurredAt { fast.properties.timestamp = full.properties.timestamp }
            #expect(fast.properties == full.properties, "\(bytes)")
            #expect(fast.body == bytes)
        }
        #expect(envelopes > 5000)
    }

    @Test func leavesUnusualShapesToSwiftProtobuf() throws {
        var user = User()
        user.id = "u1"
        var change = EntityChange()
        change.entityID = "u1"
        change.user = user
        let plain: [UInt8] = try change.serializedBytes()
        #expect(ChangeWire.decode(plain) == change)
        // The entity id field again: swift-protobuf keeps the later one.
        #expect(ChangeWire.decode(plain + [0x1a, 0x02, 0x75, 0x32]) == nil)
        // An unknown field 15 (varint 1).
        #expect(ChangeWire.decode(plain + [0x78, 0x01]) == nil)
        // A group after the user.
        #expect(ChangeWire.decode(plain + [0x3a, 0x00]) == nil)
        // Invalid UTF-8 in the entity id: swift-protobuf rejects the message.
        let invalid: [UInt8] = [0x1a, 0x02, 0xc3, 0x28]
        #expect(ChangeWire.decode(invalid) == nil)
        #expect((try? EntityChange(serializedBytes: invalid)) == nil)
        // Attributes.
        user.attributes = ["k": "v"]
        change.user = user
        #expect(ChangeWire.decode(try change.serializedBytes()) == nil)
        #expect(ChangeWire.decode([]) == EntityChange())
        // Tags padded to five bytes and more, which swift-protobuf rejects.
        for padded: [UInt8] in [[0x8a, 0x80, 0x80, 0x80, 0x80, 0x00, 0x00], [0x9a, 0x80, 0x80, 0x80, 0x80, 0x00, 0x02, 0x75, 0x31]] {
            #expect(ChangeWire.decode(padded) == nil)
            #expect((try? EntityChange(serializedBytes: padded)) == nil)
        }
    }
}
