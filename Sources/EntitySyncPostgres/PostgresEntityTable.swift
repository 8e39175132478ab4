import EntitySyncCore
import EntitySyncProto
import Foundation
import NIOCore
import PostgresNIO

/// The tables both stores keep entities in, as `EntityTable` does for SQLite: one row per
/// entity, tombstones included, the state as serialized protobuf. Ids compare byte-wise
/// (`COLLATE "C"`), so paging and snapshots order entities as SQLite does.
enum PostgresEntityTable {
    static let create = [
        """
        CREATE TABLE entities (
            kind TEXT NOT NULL,
            id TEXT COLLATE "C" NOT NULL,
            version BIGINT NOT NULL,
            deleted BOOLEAN NOT NULL DEFAULT FALSE,
            state BYTEA NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (kind, id)
        )
        """,
        """
        CREATE TABLE group_members (
            group_id TEXT COLLATE "C" NOT NULL,
            user_id TEXT COLLATE "C" NOT NULL,
            PRIMARY KEY (group_id, user_id)
        )
        """,
        "CREATE INDEX group_members_by_user ON group_members (user_id)",
    ]

    struct Stored {
        var version: UInt64
        var deleted: Bool
        var state: [UInt8]
    }

    static func fetch(_ sql: SQL, kind: EntityKind, id: String) async throws -> Stored? {
        guard let row = try await sql.rows("""
            SELECT version, deleted, state FROM entities WHERE kind = \(kind.rawValue) AND id = \(id)
            """).first else { return nil }
        let (version, deleted, state) = try row.decode((Int64, Bool, ByteBuffer).self)
        guard let stored = UInt64(exactly: version) else {
            throw SyncError(.storeUnavailable, "\(kind.rawValue) '\(id)' has a negative version (\(version)) in the store")
        }
        return Stored(version: stored, deleted: deleted, state: Array(state.readableBytesView))
    }

    static func save(_ sql: SQL, kind: EntityKind, id: String, version: UInt64, deleted: Bool, state: [UInt8]) async throws {
        let signed = try self.signed(version, kind: kind, id: id)
        try await sql.execute("""
            INSERT INTO entities (kind, id, version, deleted, state, updated_at)
            VALUES (\(kind.rawValue), \(id), \(signed), \(deleted), \(ByteBuffer(bytes: state)), \(Date().timeIntervalSince1970))
            ON CONFLICT (kind, id) DO UPDATE SET version = EXCLUDED.version, deleted = EXCLUDED.deleted,
                state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
            """)
    }

    /// Writes the entity only if `version` is newer than the stored one, in one statement (the
    /// row lock it takes orders competing instances). True if it wrote.
    static func saveIfNewer(_ sql: SQL, kind: EntityKind, id: String, version: UInt64, deleted: Bool,
                            state: [UInt8]) async throws -> Bool {
        let signed = try self.signed(version, kind: kind, id: id)
        return try await !sql.rows("""
            INSERT INTO entities (kind, id, version, deleted, state, updated_at)
            VALUES (\(kind.rawValue), \(id), \(signed), \(deleted), \(ByteBuffer(bytes: state)), \(Date().timeIntervalSince1970))
            ON CONFLICT (kind, id) DO UPDATE SET version = EXCLUDED.version, deleted = EXCLUDED.deleted,
                state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
            WHERE entities.version < EXCLUDED.version
            RETURNING version
            """).isEmpty
    }

    static func replaceMembers(_ sql: SQL, groupID: String, memberIDs: [String]) async throws {
        try await sql.execute("DELETE FROM group_members WHERE group_id = \(groupID)")
        guard !memberIDs.isEmpty else { return }
        try await sql.execute("""
            INSERT INTO group_members (group_id, user_id) SELECT \(groupID), unnest(\(memberIDs)::text[])
            ON CONFLICT DO NOTHING
            """)
    }

    static func groupIDs(_ sql: SQL, containing userID: String) async throws -> [String] {
        try await sql.rows("SELECT group_id FROM group_members WHERE user_id = \(userID) ORDER BY group_id")
            .map { try $0.decode(String.self) }
    }

    static func version(_ sql: SQL, kind: EntityKind, id: String) async throws -> EntityVersion? {
        try await self.fetch(sql, kind: kind, id: id).map { EntityVersion(version: $0.version, deleted: $0.deleted) }
    }

    static func versions(_ sql: SQL, kind: EntityKind) async throws -> [String: EntityVersion] {
        var result: [String: EntityVersion] = [:]
        for row in try await sql.rows("SELECT id, version, deleted FROM entities WHERE kind = \(kind.rawValue)") {
            let (id, version, deleted) = try row.decode((String, Int64, Bool).self)
            result[id] = EntityVersion(version: UInt64(clamping: version), deleted: deleted)
        }
        return result
    }

    /// Live entities' states after `after` in id order.
    static func states(_ sql: SQL, kind: EntityKind, after: String?, limit: Int) async throws -> [[UInt8]] {
        try await sql.rows("""
            SELECT state FROM entities WHERE kind = \(kind.rawValue) AND NOT deleted AND id > \(after ?? "")
            ORDER BY id LIMIT \(limit)
            """).map { Array(try $0.decode(ByteBuffer.self).readableBytesView) }
    }

    static func users(_ sql: SQL, after: String?, limit: Int) async throws -> [User] {
        try await self.states(sql, kind: .user, after: after, limit: limit).map { try User(serializedBytes: $0) }
    }

    static func groups(_ sql: SQL, after: String?, limit: Int) async throws -> [Group] {
        try await self.states(sql, kind: .group, after: after, limit: limit).map { try Group(serializedBytes: $0) }
    }

    static func user(_ sql: SQL, id: String) async throws -> User? {
        guard let stored = try await self.fetch(sql, kind: .user, id: id), !stored.deleted else { return nil }
        return try User(serializedBytes: stored.state)
    }

    static func group(_ sql: SQL, id: String) async throws -> Group? {
        guard let stored = try await self.fetch(sql, kind: .group, id: id), !stored.deleted else { return nil }
        return try Group(serializedBytes: stored.state)
    }

    /// Validation keeps versions within Int64; this keeps a caller that skipped it from trapping.
    private static func signed(_ version: UInt64, kind: EntityKind, id: String) throws -> Int64 {
        guard let signed = Int64(exactly: version) else {
            throw SyncError(.invalidArgument, "version \(version) of \(kind.rawValue) '\(id)' is above \(Int64.max), "
                            + "the largest the store can hold")
        }
        return signed
    }
}
