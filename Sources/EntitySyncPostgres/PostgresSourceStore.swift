import EntitySyncCore
import EntitySyncProto
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// The producer's source of truth in PostgreSQL, shared by producers on any number of hosts.
/// Each mutation changes the entity, increments its version and inserts its change event into
/// the outbox in one transaction. Mutations take one transaction-scoped advisory lock, so they
/// commit one at a time, as on SQLite: outbox sequences follow commit order and a check (a
/// member exists, a version matches) holds until its write commits.
public final class PostgresSourceStore: SourceStore, PostgresEntityReads {
    let database: PostgresDatabase
    private let producer: String
    private let writeLock: String
    public let commits = WakeSignal()

    static let migrations = [
        PostgresDatabase.Migration(version: 1, statements: PostgresEntityTable.create + [
            """
            CREATE TABLE outbox (
                sequence BIGSERIAL PRIMARY KEY,
                kind TEXT NOT NULL,
                entity_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                message_id TEXT NOT NULL,
                payload BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )
            """,
            // The relay lease: who relays, until when (the server's clock, not a host's), and a
            // token that grows with every change of holder.
            """
            CREATE TABLE relay_lease (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                owner TEXT NOT NULL,
                token BIGINT NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL
            )
            """,
        ]),
    ]

    /// Connects to the database at `url` and creates or migrates the store's schema (by default
    /// `entitysync_source`); `producer` is recorded in every event.
    public init(url: PostgresURL, producer: String, logger: Logger = Logger(label: "entitysync.postgres")) async throws {
        self.database = try await PostgresDatabase(url: url, kind: "source", defaultSchema: "entitysync_source",
                                                   migrations: Self.migrations, logger: logger)
        self.producer = producer
        self.writeLock = "entitysync-source-writes:\(self.database.schema)"
    }

    /// Closes the store's connections.
    public func close() { self.database.close() }

    /// Runs one mutation in a transaction that holds the store's write lock.
    private func mutate<T: Sendable>(_ what: String, _ body: @escaping @Sendable (SQL) async throws -> T) async throws -> T {
        let lock = self.writeLock
        let result = try await self.database.transaction(what) { sql in
            try await sql.lock(lock)
            return try await body(sql)
        }
        self.commits.signal()
        return result
    }

    // MARK: Users

    public func createUser(_ draft: UserDraft) async throws -> User {
        try DraftValidation.validate(draft)
        let producer = self.producer
        return try await self.mutate("create a user") { sql in
            let existing = try await PostgresEntityTable.fetch(sql, kind: .user, id: draft.id)
            if let existing, !existing.deleted {
                throw SyncError(.alreadyExists, "user '\(draft.id)' already exists (version \(existing.version)); update it instead")
            }
            let user = ChangeEvents.user(from: draft, version: (existing?.version ?? 0) + 1)
            try await Self.store(sql, user: user, producer: producer)
            return user
        }
    }

    public func updateUser(_ draft: UserDraft, expectedVersion: UInt64?) async throws -> User {
        try DraftValidation.validate(draft)
        let producer = self.producer
        return try await self.mutate("update a user") { sql in
            let existing = try await Self.requireLive(sql, kind: .user, id: draft.id, expectedVersion: expectedVersion)
            let user = ChangeEvents.user(from: draft, version: existing.version + 1)
            try await Self.store(sql, user: user, producer: producer)
            return user
        }
    }

    public func deleteUser(id: String, expectedVersion: UInt64?) async throws -> UInt64 {
        try DraftValidation.validateID(id, field: "user.id")
        let producer = self.producer
        return try await self.mutate("delete a user") { sql in
            let existing = try await Self.requireLive(sql, kind: .user, id: id, expectedVersion: expectedVersion)
            let version = existing.version + 1
            try await PostgresEntityTable.save(sql, kind: .user, id: id, version: version, deleted: true, state: [])
            try await Self.enqueue(sql, kind: .user, id: id, version: version, state: nil, producer: producer)
            // The user leaves every group it was in; each group changes and says so itself.
            for groupID in try await PostgresEntityTable.groupIDs(sql, containing: id) {
                guard let group = try await PostgresEntityTable.group(sql, id: groupID),
                      let changed = ChangeEvents.group(group, losingDeletedUser: id) else { continue }
                try await Self.store(sql, group: changed, producer: producer)
            }
            return version
        }
    }

    // MARK: Groups

    public func createGroup(_ draft: GroupDraft) async throws -> Group {
        try DraftValidation.validate(draft)
        let producer = self.producer
        return try await self.mutate("create a group") { sql in
            let existing = try await PostgresEntityTable.fetch(sql, kind: .group, id: draft.id)
            if let existing, !existing.deleted {
                throw SyncError(.alreadyExists, "group '\(draft.id)' already exists (version \(existing.version)); update it instead")
            }
            try await Self.requireUsers(sql, draft.memberIDs)
            let group = ChangeEvents.group(from: draft, version: (existing?.version ?? 0) + 1)
            try await Self.store(sql, group: group, producer: producer)
            return group
        }
    }

    public func updateGroup(_ draft: GroupDraft, expectedVersion: UInt64?) async throws -> Group {
        try DraftValidation.validate(draft)
        let producer = self.producer
        return try await self.mutate("update a group") { sql in
            let existing = try await Self.requireLive(sql, kind: .group, id: draft.id, expectedVersion: expectedVersion)
            try await Self.requireUsers(sql, draft.memberIDs)
            let group = ChangeEvents.group(from: draft, version: existing.version + 1)
            try await Self.store(sql, group: group, producer: producer)
            return group
        }
    }

    public func deleteGroup(id: String, expectedVersion: UInt64?) async throws -> UInt64 {
        try DraftValidation.validateID(id, field: "group.id")
        let producer = self.producer
        return try await self.mutate("delete a group") { sql in
            let existing = try await Self.requireLive(sql, kind: .group, id: id, expectedVersion: expectedVersion)
            let version = existing.version + 1
            try await PostgresEntityTable.save(sql, kind: .group, id: id, version: version, deleted: true, state: [])
            try await PostgresEntityTable.replaceMembers(sql, groupID: id, memberIDs: [])
            try await Self.enqueue(sql, kind: .group, id: id, version: version, state: nil, producer: producer)
            return version
        }
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
        return try await self.mutate("change a group's members") { sql in
            _ = try await Self.requireLive(sql, kind: .group, id: groupID, expectedVersion: expectedVersion)
            guard let group = try await PostgresEntityTable.group(sql, id: groupID) else {
                throw SyncError(.notFound, "group '\(groupID)' does not exist")
            }
            if adding { try await Self.requireUsers(sql, userIDs) }
            // Nothing to change: no new version, no event.
            guard let changed = ChangeEvents.group(group, adding: adding, members: userIDs) else { return group }
            try await Self.store(sql, group: changed, producer: producer)
            return changed
        }
    }

    // MARK: Reads

    public func snapshot(of kind: EntityKind, after: String?, limit: Int) async throws -> [EntityChange] {
        let producer = self.producer
        return try await self.database.read("read a snapshot page") { sql in
            try await sql.rows("""
                SELECT id, version, deleted, state FROM entities WHERE kind = \(kind.rawValue) AND id > \(after ?? "")
                ORDER BY id LIMIT \(limit)
                """).map { row in
                let (id, version, deleted, state) = try row.decode((String, Int64, Bool, ByteBuffer).self)
                return try ChangeEvents.snapshotEntry(kind: kind, id: id, version: UInt64(clamping: version), deleted: deleted,
                                                      state: Array(state.readableBytesView), producer: producer)
            }
        }
    }

    // MARK: Outbox

    public func claimOutbox(owner: String, lease: Duration, limit: Int, removing confirmed: [Int64]) async throws -> [OutboxRecord] {
        let leaseMicroseconds = lease.components.seconds * 1_000_000 + lease.components.attoseconds / 1_000_000_000_000
        return try await self.database.transaction("claim outbox rows") { sql in
            if !confirmed.isEmpty {
                try await sql.execute("DELETE FROM outbox WHERE sequence = ANY(\(confirmed))")
            }
            try await sql.execute("""
                INSERT INTO relay_lease (id, owner, token, expires_at) VALUES (1, '', 0, '-infinity')
                ON CONFLICT (id) DO NOTHING
                """)
            // The row lock orders relays claiming at once; expiry is judged on the server's clock.
            let row = try await sql.rows("""
                SELECT owner, expires_at > clock_timestamp() FROM relay_lease WHERE id = 1 FOR UPDATE
                """).first
            if let row {
                let (holder, live) = try row.decode((String, Bool).self)
                if holder != owner && live { return [] }
            }
            try await sql.execute("""
                UPDATE relay_lease SET token = token + (CASE WHEN owner = \(owner) THEN 0 ELSE 1 END), owner = \(owner),
                    expires_at = clock_timestamp() + make_interval(secs => \(Double(leaseMicroseconds) / 1_000_000))
                WHERE id = 1
                """)
            guard limit > 0 else { return [] }
            return try await sql.rows("""
                SELECT sequence, kind, entity_id, version, message_id, payload FROM outbox ORDER BY sequence LIMIT \(limit)
                """).compactMap { row in
                let (sequence, kind, entityID, version, messageID, payload) =
                    try row.decode((Int64, String, String, Int64, String, ByteBuffer).self)
                guard let kind = EntityKind(rawValue: kind) else { return nil }
                return OutboxRecord(sequence: sequence, kind: kind, entityID: entityID, version: UInt64(clamping: version),
                                    messageID: messageID, payload: Array(payload.readableBytesView))
            }
        }
    }

    public func releaseOutboxLease(owner: String) async throws {
        try await self.database.read("release the relay lease") { sql in
            try await sql.execute("""
                UPDATE relay_lease SET owner = '', expires_at = '-infinity' WHERE id = 1 AND owner = \(owner)
                """)
        }
    }

    public func removeOutbox(_ sequences: [Int64]) async throws {
        guard !sequences.isEmpty else { return }
        try await self.database.read("remove relayed outbox rows") { sql in
            try await sql.execute("DELETE FROM outbox WHERE sequence = ANY(\(sequences))")
        }
    }

    public func outboxCount() async throws -> Int {
        try await self.database.read("count the outbox") { sql in
            try await sql.rows("SELECT count(*) FROM outbox").first.map { try $0.decode(Int.self) } ?? 0
        }
    }

    // MARK: Helpers (inside a mutation's transaction)

    private static func requireLive(_ sql: SQL, kind: EntityKind, id: String,
                                    expectedVersion: UInt64?) async throws -> PostgresEntityTable.Stored {
        guard let existing = try await PostgresEntityTable.fetch(sql, kind: kind, id: id), !existing.deleted else {
            throw SyncError(.notFound, "\(kind.rawValue) '\(id)' does not exist")
        }
        if let expectedVersion, expectedVersion != existing.version {
            throw SyncError(.versionMismatch, "\(kind.rawValue) '\(id)' is at version \(existing.version), not "
                            + "\(expectedVersion): read it again and retry with the current version")
        }
        return existing
    }

    private static func requireUsers(_ sql: SQL, _ ids: [String]) async throws {
        let wanted = Set(ids)
        guard !wanted.isEmpty else { return }
        let live = Set(try await sql.rows("""
            SELECT id FROM entities WHERE kind = 'user' AND NOT deleted AND id = ANY(\(Array(wanted)))
            """).map { try $0.decode(String.self) })
        if let missing = wanted.subtracting(live).sorted().first {
            throw SyncError(.notFound, "user '\(missing)' does not exist; create it before adding it to a group")
        }
    }

    private static func store(_ sql: SQL, user: User, producer: String) async throws {
        try await PostgresEntityTable.save(sql, kind: .user, id: user.id, version: user.version, deleted: false,
                                           state: try user.serializedBytes())
        try await self.enqueue(sql, kind: .user, id: user.id, version: user.version, state: .user(user), producer: producer)
    }

    private static func store(_ sql: SQL, group: Group, producer: String) async throws {
        try await PostgresEntityTable.save(sql, kind: .group, id: group.id, version: group.version, deleted: false,
                                           state: try group.serializedBytes())
        try await PostgresEntityTable.replaceMembers(sql, groupID: group.id, memberIDs: group.memberIds)
        try await self.enqueue(sql, kind: .group, id: group.id, version: group.version, state: .group(group), producer: producer)
    }

    /// Inserts the change event into the outbox, in the caller's transaction.
    private static func enqueue(_ sql: SQL, kind: EntityKind, id: String, version: UInt64,
                                state: EntityChange.OneOf_State?, producer: String) async throws {
        let change = ChangeEvents.change(kind: kind, id: id, version: version, state: state, producer: producer)
        let payload: [UInt8] = try change.serializedBytes()
        try await sql.execute("""
            INSERT INTO outbox (kind, entity_id, version, message_id, payload, created_at)
            VALUES (\(kind.rawValue), \(id), \(Int64(clamping: version)), \(change.messageID), \(ByteBuffer(bytes: payload)),
                    \(Date().timeIntervalSince1970))
            """)
    }
}
