import AMQPClient
import EntitySyncCore
import EntitySyncProto
import Foundation
import SwiftProtobuf
import Testing

func sampleUserChange(id: String = "u1", version: UInt64 = 3) -> EntityChange {
    var user = User()
    user.id = id
    user.name = "Ada"
    user.email = "ada@example.com"
    user.status = .active
    user.version = version
    var change = EntityChange()
    change.messageID = "user:\(id):\(version)"
    change.entityType = .user
    change.entityID = id
    change.version = version
    change.operation = .upsert
    change.user = user
    return change
}

@Suite struct ChangeCodecTests {
    @Test func protobufRoundTrip() throws {
        let change = sampleUserChange()
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
        let json = try sampleUserChange().jsonString()
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
        var unknownType = sampleUserChange()
        unknownType.entityType = .unspecified
        var noID = sampleUserChange()
        noID.entityID = ""
        var zeroVersion = sampleUserChange()
        zeroVersion.version = 0
        var noState = sampleUserChange()
        noState.state = nil
        var mismatchedID = sampleUserChange()
        mismatchedID.entityID = "u2"
        var deleteEvent = sampleUserChange()
        deleteEvent.operation = .unspecified
        return [
            PoisonCase(name: "wrong content type", body: bytes(sampleUserChange()), contentType: "text/plain",
                       expected: .user, kind: .unsupportedContentType),
            PoisonCase(name: "no content type", body: bytes(sampleUserChange()), contentType: nil,
                       expected: .user, kind: .unsupportedContentType),
            PoisonCase(name: "garbage bytes", body: [0xff, 0xfe, 0x00, 0x13, 0x37], contentType: "application/x-protobuf",
                       expected: .user, kind: .undecodable),
            PoisonCase(name: "broken JSON", body: Array("{\"entityId\": ".utf8), contentType: "application/json",
                       expected: .user, kind: .undecodable),
            PoisonCase(name: "JSON missing fields", body: Array("{\"entityId\": \"u1\"}".utf8), contentType: "application/json",
                       expected: .user, kind: .invalid),
            PoisonCase(name: "unknown entity type", body: bytes(unknownType), contentType: "application/x-protobuf",
                       expected: .user, kind: .invalid),
            PoisonCase(name: "user event on group queue", body: bytes(sampleUserChange()), contentType: "application/x-protobuf",
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
        var change = sampleUserChange(version: 4)
        change.operation = .delete
        change.state = nil
        let decoded = try ChangeCodec.validate(change, expected: .user).get()
        #expect(decoded.isDelete)
    }
}

@Suite struct DraftValidationTests {
    @Test(arguments: ["", "has space", "ümlaut", String(repeating: "x", count: 129)])
    func badIDs(_ id: String) {
        #expect(throws: SyncError.self) { try DraftValidation.validateID(id, field: "user.id") }
    }

    @Test(arguments: ["nope", "a@b", "@b.c", "a@.c", "a b@c.d", "a@b."])
    func badEmails(_ email: String) {
        do {
            try DraftValidation.validate(UserDraft(id: "u1", name: "A", email: email))
            Issue.record("accepted \(email)")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("user.email"))
        }
    }

    @Test func goodDrafts() throws {
        try DraftValidation.validate(UserDraft(id: "user-1@corp:eu.x_y", name: "Ada", email: "ada@example.com"))
        try DraftValidation.validate(GroupDraft(id: "g1", name: "Admins", memberIDs: ["u1", "u2"]))
    }
}

@Suite struct GeneratedCodeTests {
    /// The committed generated code must come from the committed proto/ files.
    @Test func generatedCodeMatchesProto() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let recorded = try String(contentsOf: root.appendingPathComponent("Sources/EntitySyncProto/Generated/proto.sha256"),
                                  encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let process = Process()
        process.executableURL = root.appendingPathComponent("scripts/proto-hash")
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let current = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        process.waitUntilExit()
        #expect(current == recorded, "proto/ changed since the Swift code was generated: run scripts/generate-proto")
    }
}

@Suite struct WakeSignalTests {
    @Test func aSignalBeforeTheWaitIsKept() async {
        let signal = WakeSignal()
        signal.signal()
        let start = ContinuousClock.now
        await signal.wait(timeout: .seconds(30))
        #expect(start.duration(to: .now) < .seconds(10))
    }

    @Test func aWaitEndsOnSignal() async {
        let signal = WakeSignal()
        let waiter = Task { await signal.wait(timeout: .seconds(60)) }
        // Keep signalling until the waiter has returned: proves wake-up without relying on timing.
        while !Task.isCancelled {
            signal.signal()
            let returned = await Task { () -> Bool in
                await withTaskGroup(of: Bool.self) { group in
                    group.addTask { await waiter.value; return true }
                    group.addTask { try? await Task.sleep(for: .milliseconds(50)); return false }
                    let first = await group.next() ?? false
                    group.cancelAll()
                    return first
                }
            }.value
            if returned { break }
        }
    }

    @Test func aWaitEndsAtItsTimeout() async {
        let signal = WakeSignal()
        await signal.wait(timeout: .milliseconds(20))
    }
}
