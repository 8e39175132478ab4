import EntitySyncCore
import EntitySyncProto
import Foundation
import GRDB
import GRDBSQLite
import SwiftProtobuf

/// The producer's source of truth in one SQLite file: entities, tombstones and the outbox.
/// Each mutation changes the entity, increments its version and inserts its change event into
/// the outbox in one transaction, so a crash can never separate a change from its event.
/// Concurrent mutations share a transaction (group commit), each in a savepoint of its own.
public final class SQLiteSourceStore: SourceStore {
    let database: SQLiteDatabase
    private let producer: String
    public let commits = WakeSignal()

    /// Opens (creating if needed) the store at `path`; `producer` is recorded in every event.
    public init(path: String, producer: String) throws {
        self.database = try SQLiteDatabase(path: path) { migrator in
            migrator.registerMigration("source-v1") { db in
                try EntityTable.create(db)
                try db.execute(sql: """
                    CREATE TABLE outbox (
                        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
                        kind TEXT NOT NULL,
                        entity_id TEXT NOT NULL,
                        version INTEGER NOT NULL,
                        message_id TEXT NOT NULL,
                        payload BLOB NOT NULL,
                        created_at REAL NOT NULL
                    );
                    CREATE TABLE relay_lease (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        owner TEXT NOT NULL,
                        expires_at REAL NOT NULL
                    );
                    """)
            }
        }
        self.producer = producer
    }

    // MARK: Users

    public func createUser(_ draft: UserDraft) async throws -> User {
        try DraftValidation.validate(draft)
        let producer = self.producer
        let user = try await self.database.groupWrite { db -> User in
            let existing = try EntityTable.fetch(db, kind: .user, id: draft.id)
            if let existing, !existing.deleted {
                throw SyncError(.alreadyExists, "user '\(draft.id)' already exists (version \(existing.version)); update it instead")
            }
            let user = ChangeEvents.user(from: draft, version: (existing?.version ?? 0) + 1)
            try Self.store(db, user: user, producer: producer)
            return user
        }
        self.commits.signal()
        return user
    }

    public func updateUser(_ draft: UserDraft, expectedVersion: UInt64?) async throws -> User {
        try DraftValidation.validate(draft)
        let producer = self.producer
        let user = try await self.database.groupWrite { db -> User in
            let existing = try Self.requireLive(db, kind: .user, id: draft.id, expectedVersion: expectedVersion)
            let user = ChangeEvents.user(from: draft, version: existing.version + 1)
            try Self.store(db, user: user, producer: producer)
            return user
        }
        self.commits.signal()
        return user
    }

    public func deleteUser(id: String, expectedVersion: UInt64?) async throws -> UInt64 {
        try DraftValidation.validateID(id, field: "user.id")
        let producer = self.producer
        let version = try await self.database.groupWrite { db -> UInt64 in
            let existing = try Self.requireLive(db, kind: .user, id: id, expectedVersion: expectedVersion)
            let version = existing.version + 1
            try EntityTable.save(db, kind: .user, id: id, version: version, deleted: true, state: [])
            try Self.enqueue(db, kind: .user, id: id, version: version, state: nil, producer: producer)
            // The user leaves every group it was in; each group changes and says so itself.
            for groupID in try EntityTable.groupIDs(db, containing: id) {
                guard let group = try EntityTable.group(db, id: groupID),
                      let changed = ChangeEvents.group(group, losingDeletedUser: id) else { continue }
                try Self.store(db, group: changed, producer: producer)
            }
            return version
        }
        self.commits.signal()
        return version
    }

    // MARK: Groups

    public func createGroup(_ draft: GroupDraft) async throws -> Group {
        try DraftValidation.validate(draft)
        let producer = self.producer
        let group = try await self.database.groupWrite { db -> Group in
            let existing = try EntityTable.fetch(db, kind: .group, id: draft.id)
            if let existing, !existing.deleted {
                throw SyncError(.alreadyExists, "group '\(draft.id)' already exists (version \(existing.version)); update it instead")
            }
            try Self.requireUsers(db, draft.memberIDs)
            let group = ChangeEvents.group(from: draft, version: (existing?.version ?? 0) + 1)
            try Self.store(db, group: group, producer: producer)
            return group
        }
        self.commits.signal()
        return group
    }

    public func updateGroup(_ draft: GroupDraft, expectedVersion: UInt64?) async throws -> Group {
        try DraftValidation.validate(draft)
        let producer = self.producer
        let group = try await self.database.groupWrite { db -> Group in
            let existing = try Self.requireLive(db, kind: .group, id: draft.id, expectedVersion: expectedVersion)
            try Self.requireUsers(db, draft.memberIDs)
            let group = ChangeEvents.group(from: draft, version: existing.version + 1)
            try Self.store(db, group: group, producer: producer)
            return group
        }
        self.commits.signal()
        return group
    }

    public func deleteGroup(id: String, expectedVersion: UInt64?) async throws -> UInt64 {
        try DraftValidation.validateID(id, field: "group.id")
        let producer = self.producer
        let version = try await self.database.groupWrite { db -> UInt64 in
            let existing = try Self.requireLive(db, kind: .group, id: id, expectedVersion: expectedVersion)
            let version = existing.version + 1
            try EntityTable.save(db, kind: .group, id: id, version: version, deleted: true, state: [])
            try EntityTable.replaceMembers(db, groupID: id, memberIDs: [])
            try Self.enqueue(db, kind: .group, id: id, version: version, state: nil, producer: producer)
            return version
        }
        self.commits.signal()
        return version
    }

    public func addGroupMembers(groupID: String, userIDs: [String], expectedVersion: UInt64?) async throws -> Group {
        try await self.changeMembers(groupID: groupID, userIDs: userIDs, expectedVersion: expectedVersion, adding: true)
    }

    public func removeGroupMembers(groupID: String, userIDs: [String], expectedVersion: UInt64?) async throws -> Group {
        try await self.changeMembers(groupID: groupID, userIDs: userIDs, expectedVersion: expectedVersion, adding: false)
    }

    private func changeMembers(groupID: String, userIDs: [String], expectedVersion: UInt64?, adding: Bool) async throws -> Group {
        try DraftValidation.validateID(groupID, field: "group_id")
        guard !userIDs.isEmpty else { throw SyncError(.invalidArgument, "user_ids is empty; name at least one user") }
        try DraftValidation.validateMembers(userIDs, field: "user_ids")
        let producer = self.producer
        let (group, changed) = try await self.database.groupWrite { db -> (Group, Bool) in
            _ = try Self.requireLive(db, kind: .group, id: groupID, expectedVersion: expectedVersion)
            guard let group = try EntityTable.group(db, id: groupID) else {
                throw SyncError(.notFound, "group '\(groupID)' does not exist")
            }
            if adding { try Self.requireUsers(db, userIDs) }
            // Nothing to change: no new version, no event.
            guard let changed = ChangeEvents.group(group, adding: adding, members: userIDs) else { return (group, false) }
            try Self.store(db, group: changed, producer: producer)
            return (changed, true)
        }
        if changed { self.commits.signal() }
        return group
    }

    // MARK: Reads

    public func user(id: String) async throws -> User? {
        try await self.database.read { db in try EntityTable.user(db, id: id) }
    }

    public func group(id: String) async throws -> Group? {
        try await self.database.read { db in try EntityTable.group(db, id: id) }
    }

    public func versions(of kind: EntityKind) async throws -> [String: EntityVersion] {
        try await self.database.read { db in try EntityTable.versions(db, kind: kind) }
    }

    public func listUsers(after: String?, limit: Int) async throws -> [User] {
        try await self.database.read { db in try EntityTable.users(db, after: after, limit: limit) }
    }

    public func listGroups(after: String?, limit: Int) async throws -> [Group] {
        try await self.database.read { db in try EntityTable.groups(db, after: after, limit: limit) }
    }

    public func snapshot(of kind: EntityKind, after: String?, limit: Int) async throws -> [EntityChange] {
        let producer = self.producer
        return try await self.database.read { db in
            try Row.fetchAll(db, sql: """
                SELECT id, version, deleted, state FROM entities WHERE kind = ? AND id > ? ORDER BY id LIMIT ?
                """, arguments: [kind.rawValue, after ?? "", limit]).map { row in
                let id: String = row["id"]
                let version = UInt64(row["version"] as Int64)
                let deleted: Bool = row["deleted"]
                return try ChangeEvents.snapshotEntry(kind: kind, id: id, version: version, deleted: deleted,
                                                      state: [UInt8](row["state"] as Data), producer: producer)
            }
        }
    }

    // MARK: Outbox

    public func claimOutbox(owner: String, lease: Duration, limit: Int, removing confirmed: [Int64]) async throws -> [OutboxRecord] {
        let leaseSeconds = Double(lease.components.seconds) + Double(lease.components.attoseconds) / 1e18
        return try await self.database.write { db -> [OutboxRecord] in
            try Self.remove(db, confirmed)
            let now = Date().timeIntervalSince1970
            var renew = true
            if let row = try Row.fetchOne(db, sql: "SELECT owner, expires_at FROM relay_lease WHERE id = 1") {
                let holder: String = row["owner"]
                let expiresAt: Double = row["expires_at"]
                if holder != owner && expiresAt > now { return [] }
                // A live lease of ours is left alone when the claim would only push its expiry
                // out by less than min(1 s, a quarter of the lease): a busy relay claims many
                // batches a second, and each renewal is a commit with an fsync. A lapsed lease,
                // or a claim that shortens it, is always written.
                let pushedOut = now + leaseSeconds - expiresAt
                renew = holder != owner || expiresAt <= now || pushedOut < 0 || pushedOut >= min(1, leaseSeconds / 4)
            }
            if renew {
                try db.execute(sql: """
                    INSERT INTO relay_lease (id, owner, expires_at) VALUES (1, ?, ?)
                    ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
                    """, arguments: [owner, now + leaseSeconds])
            }
            return try Row.fetchAll(db, sql: """
                SELECT sequence, kind, entity_id, version, message_id, payload FROM outbox ORDER BY sequence LIMIT ?
                """, arguments: [limit]).compactMap { row in
                guard let kind = EntityKind(rawValue: row["kind"]) else { return nil }
                let version: Int64 = row["version"]
                let payload: Data = row["payload"]
                return OutboxRecord(sequence: row["sequence"], kind: kind, entityID: row["entity_id"],
                                    version: UInt64(version), messageID: row["message_id"], payload: [UInt8](payload))
            }
        }
    }

    public func releaseOutboxLease(owner: String) async throws {
        try await self.database.write { db in
            try db.execute(sql: "DELETE FROM relay_lease WHERE id = 1 AND owner = ?", arguments: [owner])
        }
    }

    public func removeOutbox(_ sequences: [Int64]) async throws {
        guard !sequences.isEmpty else { return }
        try await self.database.write { db in try Self.remove(db, sequences) }
    }

    private static func remove(_ db: Database, _ sequences: [Int64]) throws {
        // SQLite binds at most 32,766 parameters per statement; a batch is far below that, but
        // a caller's list is not bounded here.
        for start in stride(from: 0, to: sequences.count, by: 1000) {
            let chunk = sequences[start..<min(start + 1000, sequences.count)]
            try db.execute(sql: "DELETE FROM outbox WHERE sequence IN (\(databaseQuestionMarks(count: chunk.count)))",
                           arguments: StatementArguments(chunk))
        }
    }

    public func outboxCount() async throws -> Int {
        try await self.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox") ?? 0 }
    }

    // MARK: Helpers (inside a write transaction)

    private static func requireLive(_ db: Database, kind: EntityKind, id: String, expectedVersion: UInt64?) throws -> EntityTable.Stored {
        guard let existing = try EntityTable.fetch(db, kind: kind, id: id), !existing.deleted else {
            throw SyncError(.notFound, "\(kind.rawValue) '\(id)' does not exist")
        }
        if let expectedVersion, expectedVersion != existing.version {
            throw SyncError(.versionMismatch, "\(kind.rawValue) '\(id)' is at version \(existing.version), not "
                            + "\(expectedVersion): read it again and retry with the current version")
        }
        return existing
    }

    private static func requireUsers(_ db: Database, _ ids: [String]) throws {
        for id in Set(ids).sorted() {
            guard let user = try EntityTable.fetch(db, kind: .user, id: id), !user.deleted else {
                throw SyncError(.notFound, "user '\(id)' does not exist; create it before adding it to a group")
            }
        }
    }

    private static func store(_ db: Database, user: User, producer: String) throws {
        try EntityTable.save(db, kind: .user, id: user.id, version: user.version, deleted: false, state: try user.serializedBytes())
        try self.enqueue(db, kind: .user, id: user.id, version: user.version, state: .user(user), producer: producer)
    }

    private static func store(_ db: Database, group: Group, producer: String) throws {
        try EntityTable.save(db, kind: .group, id: group.id, version: group.version, deleted: false,
                             state: try group.serializedBytes())
        try EntityTable.replaceMembers(db, groupID: group.id, memberIDs: group.memberIds)
        try self.enqueue(db, kind: .group, id: group.id, version: group.version, state: .group(group), producer: producer)
    }

    /// Inserts the change event into the outbox, in the caller's transaction. Stepped through
    /// `RawStep`, as `EntityTable` writes entities: GRDB's `StatementArguments` were a tenth of
    /// a mutation's CPU.
    private static func enqueue(_ db: Database, kind: EntityKind, id: String, version: UInt64,
                                state: EntityChange.OneOf_State?, producer: String) throws {
        let change = ChangeEvents.change(kind: kind, id: id, version: version, state: state, producer: producer)
        let payload: [UInt8] = try change.serializedBytes()
        guard let signed = Int64(exactly: version) else {
            throw SyncError(.invalidArgument, "version \(version) of \(kind.rawValue) '\(id)' is above \(Int64.max), "
                            + "the largest the store can hold")
        }
        let statement = try db.cachedStatement(sql: Self.enqueueSQL)
        try RawStep.requireTransaction(db, sql: Self.enqueueSQL)
        let now = Date().timeIntervalSince1970
        let messageID = change.messageID
        try kind.rawValue.withCString { kindText in try id.withCString { idText in
            try messageID.withCString { messageIDText in try payload.withUnsafeBytes { payloadBytes in
                try RawStep.run(statement, bind: { bind in
                    bind.text(1, kindText, count: kind.rawValue.utf8.count)
                    bind.text(2, idText, count: id.utf8.count)
                    bind.int64(3, signed)
                    bind.text(4, messageIDText, count: messageID.utf8.count)
                    bind.blob(5, payloadBytes)
                    bind.double(6, now)
                }) { code, _ in
                    guard code == SQLITE_DONE else { throw RawStep.failure(code, db, sql: Self.enqueueSQL) }
                }
            } }
        } }
    }

    private static let enqueueSQL = """
        INSERT INTO outbox (kind, entity_id, version, message_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)
        """
}
