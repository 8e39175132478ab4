import AMQPModel
import EntitySyncCore
import EntitySyncProto
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import SwiftProtobuf
import Testing

@Suite struct ChangeCodecTests {
    @Test func protobufRoundTrip() throws {
        let change = Fixtures.userChange()
        let message = try ChangeCodec.message(for: change)
        #expect(message.properties.contentType == "application/x-protobuf")
        #expect(message.properties.messageID == "user:u1:3")
        #expect(message.properties.deliveryMode == 2)
        #expect(message.properties.headers["version"] == .int(3))
        let decoded = try ChangeCodec.decode(body: message.body, contentType: message.properties.contentType, expected: .user).get()
        #expect(decoded.change == change)
        #expect(decoded.kind == .user && decoded.version == 3 && !decoded.isDelete)
    }

    @Test func acceptsTheProtobufJSONForm() throws {
        let json = try Fixtures.userChange().jsonString()
        let decoded = try ChangeCodec.decode(body: Array(json.utf8), contentType: "application/json; charset=utf-8",
                                             expected: .user).get()
        #expect(decoded.entityID == "u1")
    }

    struct PoisonCase: Sendable, CustomTestStringConvertible {
        var name: String
        var body: [UInt8]
        var contentType: String?
        var expected: EntityKind
        var kind: PoisonReason.Kind
        var testDescription: String { self.name }
    }

    static func bytes(_ change: EntityChange) -> [UInt8] { (try? change.serializedBytes()) ?? [] }

    static let poisonCases: [PoisonCase] = {
        var unknownType = Fixtures.userChange()
        unknownType.entityType = .unspecified
        var noID = Fixtures.userChange()
        noID.entityID = ""
        var zeroVersion = Fixtures.userChange()
        zeroVersion.version = 0
        var noState = Fixtures.userChange()
        noState.state = nil
        var mismatchedID = Fixtures.userChange()
        mismatchedID.entityID = "u2"
        var deleteEvent = Fixtures.userChange()
        deleteEvent.operation = .unspecified
        return [
            PoisonCase(name: "wrong content type", body: bytes(Fixtures.userChange()), contentType: "text/plain",
                       expected: .user, kind: .unsupportedContentType),
            PoisonCase(name: "no content type", body: bytes(Fixtures.userChange()), contentType: nil,
                       expected: .user, kind: .unsupportedContentType),
            PoisonCase(name: "garbage bytes", body: [0xff, 0xfe, 0x00, 0x13, 0x37], contentType: "application/x-protobuf",
                       expected: .user, kind: .undecodable),
            PoisonCase(name: "broken JSON", body: Array("{\"entityId\": ".utf8), contentType: "application/json",
                       expected: .user, kind: .undecodable),
            PoisonCase(name: "JSON missing fields", body: Array("{\"entityId\": \"u1\"}".utf8), contentType: "application/json",
                       expected: .user, kind: .invalid),
            PoisonCase(name: "unknown entity type", body: bytes(unknownType), contentType: "application/x-protobuf",
                       expected: .user, kind: .invalid),
            PoisonCase(name: "user event on group queue", body: bytes(Fixtures.userChange()), contentType: "application/x-protobuf",
                       expected: .group, kind: .invalid),
            PoisonCase(name: "empty id", body: bytes(noID), contentType: "application/x-protobuf", expected: .user, kind: .invalid),
            PoisonCase(name: "version 0", body: bytes(zeroVersion), contentType: "application/x-protobuf", expected: .user, kind: .invalid),
            PoisonCase(name: "upsert without state", body: bytes(noState), contentType: "application/x-protobuf",
                       expected: .user, kind: .invalid),
            PoisonCase(name: "state id differs", body: bytes(mismatchedID), contentType: "application/x-protobuf",
                       expected: .user, kind: .invalid),
            PoisonCase(name: "unknown operation", body: bytes(deleteEvent), contentType: "application/x-protobuf",
                       expected: .user, kind: .invalid),
        ]
    }()

    @Test(arguments: poisonCases)
    func poison(_ testCase: PoisonCase) {
        switch ChangeCodec.decode(body: testCase.body, contentType: testCase.contentType, expected: testCase.expected) {
        case .success(let change): Issue.record("accepted \(change)")
        case .failure(let reason):
            #expect(reason.kind == testCase.kind, "\(reason)")
            #expect(!reason.detail.isEmpty)
        }
    }

    @Test func deleteNeedsNoState() throws {
        var change = Fixtures.userChange(version: 4)
        change.operation = .delete
        change.state = nil
        let decoded = try ChangeCodec.validate(change, expected: .user).get()
        #expect(decoded.isDelete)
    }
}

/// Issue 12 item 4: every field of an incoming event is checked before it reaches a store.
@Suite struct ChangeFieldValidationTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var change: EntityChange
        /// Words the poison reason must contain: the field, and the limit it broke.
        var mentions: [String]
        var testDescription: String { self.name }
    }

    static func user(_ edit: (inout EntityChange, inout User) -> Void) -> EntityChange {
        var change = Fixtures.userChange()
        var user = change.user
        edit(&change, &user)
        change.user = user
        return change
    }

    static func group(_ edit: (inout EntityChange, inout Group) -> Void) -> EntityChange {
        var change = Fixtures.groupChange()
        var group = change.group
        edit(&change, &group)
        change.group = group
        return change
    }

    static func timestamp(seconds: Int64, nanos: Int32 = 0) -> Google_Protobuf_Timestamp {
        var timestamp = Google_Protobuf_Timestamp()
        timestamp.seconds = seconds
        timestamp.nanos = nanos
        return timestamp
    }

    static let tooLong = String(repeating: "x", count: 16 * 1024 + 1)

    static let invalidCases: [Case] = [
        // The issue's example: 2^63 passed validation and trapped in the store's Int64(version).
        Case(name: "version 2^63", change: Fixtures.userChange(version: 1 << 63), mentions: ["version", "9223372036854775807"]),
        Case(name: "version UInt64.max", change: Fixtures.userChange(version: .max), mentions: ["version", "9223372036854775807"]),
        Case(name: "version 2^63 on a delete", change: {
            var change = Fixtures.userChange(version: 1 << 63)
            change.operation = .delete
            change.state = nil
            return change
        }(), mentions: ["version", "9223372036854775807"]),
        Case(name: "version 0", change: Fixtures.userChange(version: 0), mentions: ["version", "at least 1"]),
        Case(name: "entity_id over 128 bytes", change: Fixtures.userChange(String(repeating: "a", count: 129)),
             mentions: ["entity_id", "128"]),
        Case(name: "entity_id not ASCII", change: Fixtures.userChange("ümlaut"), mentions: ["entity_id", "ASCII"]),
        Case(name: "entity_id with a space", change: Fixtures.userChange("a b"), mentions: ["entity_id", "ASCII"]),
        Case(name: "message_id over 16 KiB", change: {
            var change = Fixtures.userChange()
            change.messageID = tooLong
            return change
        }(), mentions: ["message_id", "16384"]),
        Case(name: "producer over 16 KiB", change: {
            var change = Fixtures.userChange()
            change.producer = tooLong
            return change
        }(), mentions: ["producer", "16384"]),
        Case(name: "occurred_at after year 9999", change: {
            var change = Fixtures.userChange()
            change.occurredAt = timestamp(seconds: .max)
            return change
        }(), mentions: ["occurred_at.seconds", "253402300799"]),
        Case(name: "occurred_at before year 1", change: {
            var change = Fixtures.userChange()
            change.occurredAt = timestamp(seconds: .min)
            return change
        }(), mentions: ["occurred_at.seconds", "-62135596800"]),
        Case(name: "occurred_at negative nanos", change: {
            var change = Fixtures.userChange()
            change.occurredAt = timestamp(seconds: 0, nanos: -1)
            return change
        }(), mentions: ["occurred_at.nanos", "999999999"]),
        Case(name: "occurred_at a whole second of nanos", change: {
            var change = Fixtures.userChange()
            change.occurredAt = timestamp(seconds: 0, nanos: 1_000_000_000)
            return change
        }(), mentions: ["occurred_at.nanos", "999999999"]),
        Case(name: "user.id over 128 bytes", change: user { _, user in user.id = String(repeating: "u", count: 70_000) },
             mentions: ["user.id", "128"]),
        Case(name: "group.id not ASCII", change: group { _, group in group.id = "grüppe" }, mentions: ["group.id", "ASCII"]),
        Case(name: "user.name over 16 KiB", change: user { _, user in user.name = tooLong }, mentions: ["user.name", "16384"]),
        Case(name: "user.email over 16 KiB", change: user { _, user in user.email = tooLong }, mentions: ["user.email", "16384"]),
        Case(name: "user.status unknown", change: user { _, user in user.status = .UNRECOGNIZED(7) }, mentions: ["user.status", "7"]),
        Case(name: "user.status negative", change: user { _, user in user.status = .UNRECOGNIZED(-1) }, mentions: ["user.status", "-1"]),
        Case(name: "101 attributes", change: user { _, user in
            user.attributes = Dictionary(uniqueKeysWithValues: (0...100).map { ("k\($0)", "v") })
        }, mentions: ["user.attributes", "101", "100"]),
        Case(name: "empty attribute key", change: user { _, user in user.attributes = ["": "v"] },
             mentions: ["user.attributes", "1 to 128"]),
        Case(name: "attribute key over 128 bytes", change: user { _, user in
            user.attributes = [String(repeating: "k", count: 129): "v"]
        }, mentions: ["user.attributes", "1 to 128"]),
        Case(name: "attribute value over 16 KiB", change: user { _, user in user.attributes = ["k": tooLong] },
             mentions: ["user.attributes['k']", "16384"]),
        Case(name: "user.version 2^63", change: user { _, user in user.version = 1 << 63 },
             mentions: ["user.version", "9223372036854775807"]),
        Case(name: "user.updated_at out of range", change: user { _, user in user.updatedAt = timestamp(seconds: 253_402_300_800) },
             mentions: ["user.updated_at.seconds", "253402300799"]),
        Case(name: "user.updated_at nanos out of range", change: user { _, user in
            user.updatedAt = timestamp(seconds: 0, nanos: .max)
        }, mentions: ["user.updated_at.nanos", "999999999"]),
        Case(name: "group.name over 16 KiB", change: group { _, group in group.name = tooLong }, mentions: ["group.name", "16384"]),
        Case(name: "group.description over 16 KiB", change: group { _, group in group.description_p = tooLong },
             mentions: ["group.description", "16384"]),
        Case(name: "10,001 members", change: group { _, group in group.memberIds = (0...10_000).map { "u\($0)" } },
             mentions: ["group.member_ids", "10001", "10000"]),
        Case(name: "20,000 members", change: group { _, group in group.memberIds = (0..<20_000).map { "u\($0)" } },
             mentions: ["group.member_ids", "20000", "10000"]),
        Case(name: "an empty member id", change: group { _, group in group.memberIds = ["u1", ""] },
             mentions: ["group.member_ids", "empty"]),
        Case(name: "a member id over 128 bytes", change: group { _, group in group.memberIds = [String(repeating: "u", count: 129)] },
             mentions: ["group.member_ids", "128"]),
        Case(name: "a non-ASCII member id", change: group { _, group in group.memberIds = ["日本"] },
             mentions: ["group.member_ids", "ASCII"]),
        Case(name: "group.version UInt64.max", change: group { _, group in group.version = .max },
             mentions: ["group.version", "9223372036854775807"]),
        Case(name: "group.updated_at out of range", change: group { _, group in group.updatedAt = timestamp(seconds: -62_135_596_801) },
             mentions: ["group.updated_at.seconds", "-62135596800"]),
        Case(name: "a delete carrying the other type's state", change: {
            var change = Fixtures.userChange()
            change.operation = .delete
            change.group = Fixtures.groupChange("u1").group
            return change
        }(), mentions: ["delete", "state"]),
        Case(name: "a delete carrying a state with a bad field", change: {
            var change = user { _, user in user.status = .UNRECOGNIZED(3) }
            change.operation = .delete
            return change
        }(), mentions: ["user.status", "3"]),
        Case(name: "unknown operation", change: {
            var change = Fixtures.userChange()
            change.operation = .UNRECOGNIZED(5)
            return change
        }(), mentions: ["operation", "5"]),
    ]

    @Test(arguments: invalidCases)
    func invalid(_ testCase: Case) throws {
        let bytes: [UInt8] = try testCase.change.serializedBytes()
        switch ChangeCodec.decode(body: bytes, contentType: ChangeCodec.protobufContentType, expected: nil) {
        case .success(let change):
            Issue.record("accepted \(testCase.name): version \(change.version)")
        case .failure(let reason):
            #expect(reason.kind == .invalid, "\(reason)")
            for word in testCase.mentions {
                #expect(reason.detail.contains(word), "'\(reason.detail)' does not mention '\(word)'")
            }
        }
    }

    /// What a legitimate producer emits, at every limit, must still apply.
    static let acceptedCases: [Case] = [
        Case(name: "version Int64.max", change: Fixtures.userChange(version: UInt64(Int64.max)), mentions: []),
        Case(name: "version 1", change: Fixtures.userChange(version: 1), mentions: []),
        Case(name: "a 128-byte id of every allowed character", change: Fixtures.userChange(
            String(repeating: "aZ9._:@-", count: 16)), mentions: []),
        Case(name: "texts of exactly 16 KiB", change: user { change, user in
            let text = String(repeating: "é", count: 8 * 1024)
            user.name = text
            user.email = text
            change.messageID = text
            change.producer = text
        }, mentions: []),
        // The producer checks emails and names strictly; a consumer must not: an event made
        // under older rules or by another producer still has to apply.
        Case(name: "an email that is not name@domain.tld", change: user { _, user in user.email = "root@localhost" }, mentions: []),
        Case(name: "an empty name and email", change: user { _, user in
            user.name = ""
            user.email = ""
        }, mentions: []),
        Case(name: "status unspecified (a JSON producer that omits it)", change: user { _, user in user.status = .unspecified },
             mentions: []),
        Case(name: "status disabled", change: user { _, user in user.status = .disabled }, mentions: []),
        Case(name: "100 attributes with 128-byte keys and 16 KiB values", change: user { _, user in
            user.attributes = Dictionary(uniqueKeysWithValues: (0..<100).map {
                (String(format: "%03d", $0) + String(repeating: "k", count: 125), String(repeating: "v", count: 16 * 1024))
            })
        }, mentions: []),
        Case(name: "no state version (0)", change: user { _, user in user.version = 0 }, mentions: []),
        Case(name: "timestamps at both ends of their range", change: user { change, user in
            change.occurredAt = timestamp(seconds: 253_402_300_799, nanos: 999_999_999)
            user.updatedAt = timestamp(seconds: -62_135_596_800)
        }, mentions: []),
        Case(name: "a group of 10,000 members", change: group { _, group in group.memberIds = (0..<10_000).map { "u\($0)" } },
             mentions: []),
        Case(name: "a group without members", change: group { _, group in group.memberIds = [] }, mentions: []),
        Case(name: "a delete without state", change: {
            var change = Fixtures.groupChange(version: UInt64(Int64.max))
            change.operation = .delete
            change.state = nil
            return change
        }(), mentions: []),
    ]

    @Test(arguments: acceptedCases)
    func accepted(_ testCase: Case) throws {
        let bytes: [UInt8] = try testCase.change.serializedBytes()
        let decoded = ChangeCodec.decode(body: bytes, contentType: ChangeCodec.protobufContentType, expected: nil)
        #expect(try decoded.get().change == testCase.change)
    }

    /// Events exactly as the SQLite producer writes them to its outbox pass.
    @Test func theProducersOwnEventsPass() async throws {
        let store = try SQLiteSourceStore(path: Fixtures.temporaryDatabasePath("producer-events"), producer: "p1")
        let attributes = Dictionary(uniqueKeysWithValues: (0..<DraftValidation.maximumAttributes).map {
            ("key\($0)", String(repeating: "v", count: DraftValidation.maximumTextLength))
        })
        _ = try await store.createUser(UserDraft(id: "u1", name: "Ada", email: "ada@example.com", status: .disabled,
                                                 attributes: attributes))
        _ = try await store.createUser(UserDraft(id: "u2", name: "Bob", email: "bob@example.com"))
        _ = try await store.createGroup(GroupDraft(id: "g1", name: "One", description: String(repeating: "d", count: 16 * 1024),
                                                   memberIDs: ["u1", "u2"]))
        _ = try await store.deleteUser(id: "u2", expectedVersion: nil)
        _ = try await store.deleteGroup(id: "g1", expectedVersion: nil)
        let events = try await outboxEvents(store)
        #expect(events.count == 6)
        for event in events {
            _ = try ChangeCodec.validate(event, expected: nil).get()
            let json = try event.jsonString()
            _ = try ChangeCodec.decode(body: Array(json.utf8), contentType: ChangeCodec.jsonContentType, expected: nil).get()
        }
    }

    /// A JSON event as a producer in another language would write it: numbers as strings,
    /// optional fields left out.
    @Test func aMinimalJSONEventFromAnotherProducerPasses() throws {
        let json = #"{"entityType": "ENTITY_TYPE_USER", "entityId": "u9", "version": "9223372036854775807", "#
            + #""operation": "OPERATION_UPSERT", "user": {"id": "u9", "name": "Nine"}}"#
        let decoded = try ChangeCodec.decode(body: Array(json.utf8), contentType: ChangeCodec.jsonContentType, expected: .user).get()
        #expect(decoded.version == UInt64(Int64.max))
    }

    @Test(arguments: ["9223372036854775808", "18446744073709551615"])
    func aJSONVersionPastInt64IsPoison(_ version: String) {
        let json = #"{"entityType": "ENTITY_TYPE_USER", "entityId": "u9", "version": ""# + version
            + #"", "operation": "OPERATION_DELETE"}"#
        switch ChangeCodec.decode(body: Array(json.utf8), contentType: ChangeCodec.jsonContentType, expected: .user) {
        case .success: Issue.record("accepted version \(version)")
        case .failure(let reason): #expect(reason.kind == .invalid && reason.detail.contains("version"), "\(reason)")
        }
    }
}

private func outboxEvents(_ store: any SourceStore) async throws -> [EntityChange] {
    try await store.claimOutbox(owner: "inspector", lease: .seconds(1), limit: 1000).map { try EntityChange(serializedBytes: $0.payload) }
}
