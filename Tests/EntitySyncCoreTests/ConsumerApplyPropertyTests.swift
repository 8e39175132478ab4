import AMQPModel
@testable import EntitySyncCore
import EntitySyncProto
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import SwiftProtobuf
import Testing

/// A small, fast, seedable generator (SplitMix64), so a failing run can be replayed exactly.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { self.state = seed }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// True `percent` times in 100.
    mutating func chance(_ percent: Int) -> Bool { Int.random(in: 0..<100, using: &self) < percent }

    /// True `perMille` times in 1000.
    mutating func chance(perMille: Int) -> Bool { Int.random(in: 0..<1000, using: &self) < perMille }

    mutating func pick<T>(_ values: [T]) -> T { values[Int.random(in: 0..<values.count, using: &self)] }

    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0 ... .max, using: &self) } }
}

/// Random and mutated `EntityChange` messages: a change a legitimate producer could send (at
/// times at the edge of every limit), then none, one or a few fields pushed somewhere hostile,
/// so that many cases reach the store and every check is met on its own.
struct HostileChanges {
    var random: SplitMix64
    /// Cases generated so far; versions creep upwards with it.
    var step = 0
    /// Few ids, so versions of one entity collide and the version rule is exercised.
    static let userIDs = ["u1", "u2", "u3", "user-4@corp:eu.x_y", String(repeating: "aZ9._:@-", count: 16)]
    static let groupIDs = ["g1", "g2", "g3"]
    static let badVersions: [UInt64] = [0, 1 << 63, (1 << 63) + 1, .max - 1, .max]
    static let badIDs = ["", String(repeating: "a", count: 129), "ümlaut", "日本",
                         "a b", "tab\t", "nul\u{0}", "emoji😀", "ü" + String(repeating: "a", count: 127)]
    static let tooLong = String(repeating: "x", count: 16 * 1024 + 1)
    static let huge = String(repeating: "y", count: 40_000)
    static let longest = String(repeating: "é", count: 8 * 1024)

    mutating func string(maxLength: Int) -> String {
        let alphabet: [Character] = ["a", "Z", "0", " ", "é", "日", "😀", "\u{0}", "\n", "\"", "\\", "@", "."]
        return String((0..<Int.random(in: 0...maxLength, using: &self.random)).map { _ in self.random.pick(alphabet) })
    }

    mutating func validTimestamp() -> Google_Protobuf_Timestamp {
        var timestamp = Google_Protobuf_Timestamp()
        timestamp.seconds = self.random.chance(95) ? Int64.random(in: 0...2_000_000_000, using: &self.random)
            : self.random.pick([-62_135_596_800, -1, 253_402_300_799])
        timestamp.nanos = self.random.chance(95) ? Int32.random(in: 0...999_999_999, using: &self.random) : 999_999_999
        return timestamp
    }

    mutating func badTimestamp() -> Google_Protobuf_Timestamp {
        var timestamp = self.validTimestamp()
        if self.random.chance(50) {
            timestamp.seconds = self.random.pick([.min, -62_135_596_801, 253_402_300_800, .max])
        } else {
            timestamp.nanos = self.random.pick([.min, -1, 1_000_000_000, .max])
        }
        return timestamp
    }

    /// A change as a producer (this one or one in another language) may send it.
    mutating func validChange(queue: EntityKind) -> EntityChange {
        var change = EntityChange()
        change.entityType = queue.protoType
        self.step += 1
        if self.random.chance(perMille: 5) {
            // The highest versions on entities of their own, so the others keep moving.
            change.entityID = queue == .user ? "u-max" : "g-max"
            change.version = self.random.pick([UInt64(Int64.max) - 1, UInt64(Int64.max)])
        } else {
            change.entityID = self.random.pick(queue == .user ? Self.userIDs : Self.groupIDs)
            // A window that creeps upwards: versions of one entity arrive new, repeated and out of order.
            let top = UInt64(self.step / 8 + 3)
            change.version = UInt64.random(in: (top > 12 ? top - 12 : 1)...top, using: &self.random)
        }
        change.operation = self.random.chance(80) ? .upsert : .delete
        if self.random.chance(90) { change.messageID = "\(queue.rawValue):\(change.entityID):\(change.version)" }
        if self.random.chance(90) { change.producer = "fuzz" }
        if self.random.chance(80) { change.occurredAt = self.validTimestamp() }
        guard change.operation == .upsert else { return change }
        switch queue {
        case .user:
            var user = User()
            user.id = change.entityID
            user.name = self.random.chance(98) ? self.string(maxLength: 20) : Self.longest
            user.email = self.random.chance(90) ? "\(change.entityID)@example.com" : self.string(maxLength: 20)
            user.status = self.random.pick([.active, .active, .disabled, .unspecified])
            let attributes = self.random.chance(97) ? Int.random(in: 0...3, using: &self.random) : 100
            for index in 0..<attributes {
                user.attributes["k\(index)" + (self.random.chance(90) ? "" : String(repeating: "k", count: 120))] =
                    self.random.chance(98) ? self.string(maxLength: 10) : Self.longest
            }
            if self.random.chance(70) { user.version = change.version }
            if self.random.chance(70) { user.updatedAt = self.validTimestamp() }
            change.user = user
        case .group:
            var group = Group()
            group.id = change.entityID
            group.name = self.random.chance(98) ? self.string(maxLength: 20) : Self.longest
            group.description_p = self.random.chance(98) ? self.string(maxLength: 20) : Self.longest
            let count = self.random.chance(perMille: 999) ? Int.random(in: 0...5, using: &self.random) : DraftValidation.maximumMembers
            group.memberIds = (0..<count).map { "u\($0)" }
            if self.random.chance(70) { group.version = change.version }
            if self.random.chance(70) { group.updatedAt = self.validTimestamp() }
            change.group = group
        }
        return change
    }

    /// An oversized text: just over the limit, now and then far over it.
    mutating func oversized() -> String { self.random.chance(90) ? Self.tooLong : Self.huge }

    /// Pushes one field of `change` out of what any producer sends. Oversized fields cost
    /// milliseconds each to decode in a debug build, so they come at a quarter of the rate of
    /// the others: still dozens of times a run.
    mutating func spoil(_ change: inout EntityChange) {
        let heavy = self.random.chance(25)
        switch Int.random(in: 0..<17, using: &self.random) {
        case 0: change.version = self.random.chance(70) ? self.random.pick(Self.badVersions) : self.random.next() | (1 << 63)
        case 1:
            let id = heavy ? String(repeating: "a", count: 20_000) : self.random.pick(Self.badIDs)
            change.entityID = id
            if self.random.chance(70) {
                if case .user(var user)? = change.state { user.id = id; change.user = user }
                if case .group(var group)? = change.state { group.id = id; change.group = group }
            }
        case 2: change.entityType = self.random.pick([.unspecified, .UNRECOGNIZED(9), .UNRECOGNIZED(-3),
                                                       change.entityType == .user ? .group : .user])
        case 3: change.operation = self.random.pick([.unspecified, .UNRECOGNIZED(7), change.operation == .delete ? .upsert : .delete])
        case 4:
            switch Int.random(in: 0..<3, using: &self.random) {
            case 0: change.state = nil
            case 1: change.state = change.entityType == .user ? .group(Group()) : .user(User())
            default:
                if case .user(var user)? = change.state { user.id = "other"; change.user = user }
                if case .group(var group)? = change.state { group.id = "other"; change.group = group }
            }
        case 5: change.occurredAt = self.badTimestamp()
        case 6 where heavy:
            if self.random.chance(50) { change.messageID = self.oversized() } else { change.producer = self.oversized() }
        case 6: change.occurredAt = self.badTimestamp()
        default:
            self.spoilState(&change, heavy: heavy)
        }
    }

    mutating func spoilState(_ change: inout EntityChange, heavy: Bool) {
        switch change.state {
        case .user(var user)?:
            switch heavy ? Int.random(in: 0..<3, using: &self.random) : Int.random(in: 3..<9, using: &self.random) {
            case 0: user.name = self.oversized()
            case 1: user.email = self.oversized()
            case 2: user.attributes["k"] = self.oversized()
            // Enum numbers on the wire are 32-bit; swift-protobuf cannot even serialize wider ones.
            case 3: user.status = self.random.pick([.UNRECOGNIZED(3), .UNRECOGNIZED(-1), .UNRECOGNIZED(Int(Int32.max)),
                                                    .UNRECOGNIZED(Int(Int32.min))])
            case 4:
                let count = self.random.pick([101, 500])
                user.attributes = Dictionary(uniqueKeysWithValues: (0..<count).map { ("k\($0)", "v") })
            case 5: user.attributes[self.random.pick(["", String(repeating: "k", count: 129)])] = "v"
            case 6: user.version = self.random.pick(Self.badVersions.filter { $0 > 0 })
            default: user.updatedAt = self.badTimestamp()
            }
            change.user = user
        case .group(var group)?:
            switch heavy ? Int.random(in: 0..<3, using: &self.random) : Int.random(in: 3..<7, using: &self.random) {
            case 0: group.name = self.oversized()
            case 1: group.description_p = self.oversized()
            case 2:
                let count = self.random.chance(80) ? DraftValidation.maximumMembers + 1 : 20_000
                group.memberIds = (0..<count).map { "u\($0)" }
            case 3: group.memberIds.append(self.random.pick(Self.badIDs))
            case 4: group.version = self.random.pick(Self.badVersions.filter { $0 > 0 })
            default: group.updatedAt = self.badTimestamp()
            }
            change.group = group
        case nil:
            change.version = self.random.pick(Self.badVersions)
        }
    }

    /// A valid change with none, one or a few fields spoiled.
    mutating func change(queue: EntityKind) -> EntityChange {
        var change = self.validChange(queue: queue)
        let spoils = self.random.chance(40) ? 0 : (self.random.chance(80) ? 1 : Int.random(in: 2...3, using: &self.random))
        for _ in 0..<spoils { self.spoil(&change) }
        return change
    }

    /// A protobuf JSON event with numbers a JSON producer may write but a Swift value cannot hold.
    mutating func handWrittenJSON(queue: EntityKind) -> [UInt8] {
        let type = self.random.pick(["ENTITY_TYPE_USER", "ENTITY_TYPE_GROUP", "ENTITY_TYPE_UNSPECIFIED", "9", "-1", "\"x\""])
        // Ids of their own: a valid Int64.max here must not freeze the entities the other cases use.
        let id = self.random.pick(["json-u", "json-g", "", "ü"])
        let version = self.random.pick(["\"1\"", "\"9223372036854775807\"", "\"9223372036854775808\"", "\"18446744073709551615\"",
                                        "\"18446744073709551616\"", "-1", "1e30", "\"NaN\"", "null", "3"])
        let operation = self.random.pick(["OPERATION_UPSERT", "OPERATION_DELETE", "99"])
        let state = queue == .user
            ? #"{"id": "\#(id)", "version": \#(version), "status": \#(self.random.pick(["\"USER_STATUS_ACTIVE\"", "7", "-2"]))}"#
            : #"{"id": "\#(id)", "memberIds": ["u1", "\#(id)"], "version": \#(version)}"#
        let occurredAt = self.random.pick(["\"1970-01-01T00:00:00Z\"", "\"9999-12-31T23:59:59.999999999Z\"", "\"10000-01-01T00:00:00Z\"",
                                           "\"0000-01-01T00:00:00Z\"", "null"])
        return Array(#"""
            {"entityType": \#(type.hasPrefix("E") ? "\"\(type)\"" : type), "entityId": "\#(id)", "version": \#(version),
             "operation": "\#(operation)", "\#(queue.rawValue)": \#(state), "occurredAt": \#(occurredAt)}
            """#.utf8)
    }

    /// Flips, inserts, removes or truncates a few bytes of `bytes`.
    mutating func mutate(_ bytes: [UInt8]) -> [UInt8] {
        var bytes = bytes
        for _ in 0..<Int.random(in: 1...4, using: &self.random) {
            guard !bytes.isEmpty else { return self.random.bytes(8) }
            let index = Int.random(in: 0..<bytes.count, using: &self.random)
            switch Int.random(in: 0..<5, using: &self.random) {
            case 0: bytes[index] ^= UInt8(1) << UInt8.random(in: 0...7, using: &self.random)
            case 1: bytes[index] = self.random.pick([0x00, 0x7F, 0x80, 0xFF])
            case 2: bytes.insert(contentsOf: self.random.bytes(Int.random(in: 1...10, using: &self.random)), at: index)
            case 3: bytes.remove(at: index)
            default: bytes.removeSubrange(index...)
            }
        }
        return bytes
    }

    /// One message for a queue of `queue`: body, content type, and what it was (for failures).
    mutating func message(queue: EntityKind) -> (body: [UInt8], contentType: String?, label: String) {
        let protobuf = self.random.pick([ChangeCodec.protobufContentType, "Application/X-Protobuf; proto=entitysync.v1.EntityChange"])
        let json = self.random.pick([ChangeCodec.jsonContentType, "application/json; charset=utf-8"])
        switch Int.random(in: 0..<100, using: &self.random) {
        case 0..<55:
            let change = self.change(queue: queue)
            return ((try? change.serializedBytes()) ?? [], protobuf, "protobuf \(Self.summary(change))")
        case 55..<70:
            let change = self.change(queue: queue)
            // Out-of-range timestamps cannot be written as JSON; then the protobuf form goes instead.
            if let text = try? change.jsonString() { return (Array(text.utf8), json, "JSON \(Self.summary(change))") }
            return ((try? change.serializedBytes()) ?? [], protobuf, "protobuf \(Self.summary(change))")
        case 70..<80:
            let body = self.handWrittenJSON(queue: queue)
            return (body, json, "hand-written JSON \(String(decoding: body, as: UTF8.self))")
        case 80..<92:
            let change = self.validChange(queue: queue)
            let body = self.mutate((try? change.serializedBytes()) ?? [])
            return (body, protobuf, "mutated protobuf of \(Self.summary(change)): \(body.prefix(64))")
        case 92..<96:
            let body = self.random.bytes(Int.random(in: 0...64, using: &self.random))
            return (body, self.random.pick([protobuf, json]), "random bytes \(body)")
        default:
            let change = self.change(queue: queue)
            return ((try? change.serializedBytes()) ?? [], self.random.pick([nil, "", "text/plain", "application/protobuf", ";"]),
                    "wrong content type \(Self.summary(change))")
        }
    }

    /// Short enough to build for every case: sizes instead of contents.
    static func summary(_ change: EntityChange) -> String {
        let state: String
        switch change.state {
        case .user(let user)?:
            state = "user '\(user.id.prefix(20))' v\(user.version) \(user.status) \(user.attributes.count) attributes, "
                + "name \(user.name.utf8.count) B, updated \(user.updatedAt.seconds)s \(user.updatedAt.nanos)ns"
        case .group(let group)?:
            state = "group '\(group.id.prefix(20))' v\(group.version) \(group.memberIds.count) members, "
                + "name \(group.name.utf8.count) B, updated \(group.updatedAt.seconds)s \(group.updatedAt.nanos)ns"
        case nil:
            state = "no state"
        }
        return "\(change.entityType) '\(change.entityID.prefix(40))' (\(change.entityID.utf8.count) B) v\(change.version) "
            + "\(change.operation), occurred \(change.occurredAt.seconds)s \(change.occurredAt.nanos)ns, \(state)"
    }

    static let headerValues: [AMQPFieldValue?] = [
        nil, .int(.min), .int(-1), .int(0), .int(1), .int(4), .int(5), .int(1 << 40), .int(.max - 1), .int(.max),
        .string("3"), .string("-1"), .string(""), .bytes([0xFF]), .double(.nan), .double(-.infinity), .double(3),
        .bool(true), .timestamp(.max), .void, .table([ConsumerRunner.attemptHeader: .int(.max)]), .array([.int(.max)]),
    ]

    mutating func headerValue() -> AMQPFieldValue? {
        if self.random.chance(10) { return .int(Int64(bitPattern: self.random.next())) }
        return self.random.pick(Self.headerValues)
    }
}

/// Issue 12 item 6: no message and no header can trap or hang a consumer, and the replica stays
/// consistent whatever arrives.
@Suite struct ConsumerApplyPropertyTests {
    /// About seven seconds in a debug build on two busy cores; ENTITYSYNC_PROPERTY_CASES runs more.
    static let cases = ProcessInfo.processInfo.environment["ENTITYSYNC_PROPERTY_CASES"].flatMap { Int($0) } ?? 3000

    /// On tmpfs where there is one: the properties are about values, and the fsyncs of WAL
    /// checkpoints on a shared disk would stretch a few seconds into a minute.
    static func storePath() -> String {
        guard FileManager.default.isWritableFile(atPath: "/dev/shm") else { return Fixtures.temporaryDatabasePath("property") }
        return "/dev/shm/entitysync-property-\(UUID().uuidString).sqlite"
    }

    static func remove(_ path: String) {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    static func seed() -> UInt64 {
        if let text = ProcessInfo.processInfo.environment["ENTITYSYNC_PROPERTY_SEED"], let seed = UInt64(text) { return seed }
        return UInt64.random(in: 0 ... .max)
    }

    @Test(.timeLimit(.minutes(2)))
    func anyMessageIsAppliedStaleOrPoisonAndTheStoreStaysConsistent() async throws {
        let seed = Self.seed()
        let replay = "seed \(seed) (replay with ENTITYSYNC_PROPERTY_SEED=\(seed))"
        var generator = HostileChanges(random: SplitMix64(seed: seed))
        let path = Self.storePath()
        defer { Self.remove(path) }
        let store = try SQLiteReplicaStore(path: path)
        // What the store must hold: the highest version applied per entity.
        var model: [EntityKind: [String: EntityVersion]] = [.user: [:], .group: [:]]
        var tally = (applied: 0, stale: 0, poison: 0)
        for index in 0..<Self.cases {
            let queue: EntityKind = generator.random.chance(50) ? .user : .group
            let message = generator.message(queue: queue)
            let context = "case \(index), \(replay): \(message.label.prefix(600))"
            var handled: (ValidatedChange, VersionRule.Decision)?
            let outcome = await ConsumerRunner.apply(body: message.body, contentType: message.contentType, kind: queue,
                                                     store: store) { handled = ($0, $1) }
            switch outcome {
            case .poison(let reason):
                tally.poison += 1
                #expect(!reason.detail.isEmpty, "\(context)")
                #expect(handled == nil, "\(context)")
                continue
            case .failed(let error):
                Issue.record("the store failed on a message validation let through: \(error); \(context)")
                continue
            case .applied, .stale:
                break
            }
            guard case let (change, decision)? = handled else {
                Issue.record("applied or stale without a change; \(context)")
                continue
            }
            #expect(change.kind == queue && change.version >= 1 && change.version <= UInt64(Int64.max), "\(context)")
            let before = model[queue]?[change.entityID]
            let stored = try await store.version(of: queue, id: change.entityID)
            if case .applied = outcome {
                tally.applied += 1
                #expect(decision == .apply, "\(context)")
                #expect(before.map { $0.version < change.version } ?? true, "applied an older version; \(context)")
                #expect(stored == EntityVersion(version: change.version, deleted: change.isDelete), "\(context)")
                model[queue]?[change.entityID] = EntityVersion(version: change.version, deleted: change.isDelete)
            } else {
                tally.stale += 1
                #expect(decision == .stale, "\(context)")
                #expect(before.map { $0.version >= change.version } == true, "stale against nothing newer; \(context)")
                #expect(stored == before, "a stale event changed the store; \(context)")
            }
        }
        // The whole store, read back through every path, matches the model.
        for kind in EntityKind.allCases {
            #expect(try await store.versions(of: kind) == model[kind], "\(kind) versions; \(replay)")
        }
        for user in try await store.listUsers(after: nil, limit: 1000) {
            #expect(model[.user]?[user.id] == EntityVersion(version: user.version, deleted: false), "user \(user.id); \(replay)")
        }
        for group in try await store.listGroups(after: nil, limit: 1000) {
            #expect(model[.group]?[group.id] == EntityVersion(version: group.version, deleted: false), "group \(group.id); \(replay)")
            #expect(group.memberIds.count <= DraftValidation.maximumMembers, "\(replay)")
        }
        // The generator must reach the store often enough for the run to mean something.
        #expect(tally.applied > Self.cases / 50 && tally.stale > 0 && tally.poison > Self.cases / 4, "\(tally); \(replay)")
    }

    @Test(.timeLimit(.minutes(1)))
    func anyAttemptHeaderEndsWithinMaxAttempts() {
        let seed = Self.seed()
        var generator = HostileChanges(random: SplitMix64(seed: seed))
        let backoff = Backoff(initial: .seconds(1), maximum: .seconds(60), multiplier: 4)
        for index in 0..<Self.cases {
            var headers: AMQPTable = ["x-delivery-count": generator.headerValue() ?? .void]
            headers[ConsumerRunner.attemptHeader] = generator.headerValue()
            let maxAttempts = generator.random.pick([Int.min, -1, 0, 1, 2, 5, 10, Int.max])
            let context = "case \(index), seed \(seed): \(headers), maxAttempts \(maxAttempts)"
            var failures = 0
            while case .retry(let attempt, let delay) = RetryAttempt.decide(headers: headers, maxAttempts: maxAttempts, backoff: backoff) {
                failures += 1
                #expect(attempt >= 1 && attempt < maxAttempts, "\(context)")
                let expiration = Int64(RetryAttempt.expiration(for: delay))
                #expect(expiration.map { (0...RetryAttempt.maximumExpirationMilliseconds).contains($0) } == true, "\(context)")
                headers[ConsumerRunner.attemptHeader] = .int(Int64(attempt))
                // With maxAttempts Int.max a retry is right; only bounded settings are followed to the end.
                if maxAttempts > 10 || failures > 10 { break }
            }
            #expect(failures <= (maxAttempts <= 1 ? 0 : min(maxAttempts - 1, 11)), "\(context)")
        }
    }
}
