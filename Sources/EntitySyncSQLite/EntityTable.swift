import EntitySyncCore
import Foundation
import GRDB
import GRDBSQLite

/// The table both stores keep entities in: one row per entity, tombstones included, the state
/// as serialized protobuf.
enum EntityTable {
    static func create(_ db: Database) throws {
        try db.execute(sql: """
            CREATE TABLE entities (
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                version INTEGER NOT NULL,
                deleted INTEGER NOT NULL DEFAULT 0,
                state BLOB NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (kind, id)
            ) WITHOUT ROWID;
            CREATE TABLE group_members (
                group_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                PRIMARY KEY (group_id, user_id)
            ) WITHOUT ROWID;
            CREATE INDEX group_members_by_user ON group_members (user_id);
            """)
    }

    struct Stored {
        var version: UInt64
        var deleted: Bool
        var state: [UInt8]
    }

    /// Stepped through `RawStep`: through GRDB's `Row` (existential arguments, a row object,
    /// columns by name) it was 4% of a mutation's CPU on the producer.
    static func fetch(_ db: Database, kind: EntityKind, id: String) throws -> Stored? {
        let statement = try db.cachedStatement(sql: Self.fetchSQL)
        return try kind.rawValue.withCString { kindText in try id.withCString { idText in
            try RawStep.run(statement, bind: { bind in
                bind.text(1, kindText, count: kind.rawValue.utf8.count)
                bind.text(2, idText, count: id.utf8.count)
            }) { code, raw -> Stored? in
                switch code {
                case SQLITE_DONE:
                    return nil
                case SQLITE_ROW:
                    let version = sqlite3_column_int64(raw, 0)
                    // A damaged file must fail the read, not trap the process.
                    guard let stored = UInt64(exactly: version) else {
                        throw SyncError(.storeUnavailable, "\(kind.rawValue) '\(id)' has a negative version (\(version)) in the store")
                    }
                    let count = Int(sqlite3_column_bytes(raw, 2))
                    let state = count == 0 ? [] : [UInt8](UnsafeRawBufferPointer(start: sqlite3_column_blob(raw, 2), count: count))
                    return Stored(version: stored, deleted: sqlite3_column_int64(raw, 1) != 0, state: state)
                default:
                    throw RawStep.failure(code, db, sql: Self.fetchSQL)
                }
            }
        } }
    }

    private static let fetchSQL = "SELECT version, deleted, state FROM entities WHERE kind = ? AND id = ?"

    static func save(_ db: Database, kind: EntityKind, id: String, version: UInt64, deleted: Bool, state: [UInt8]) throws {
        _ = try self.write(db, try Upsert(db, onlyIfNewer: false), kind: kind, id: id, version: version, deleted: deleted,
                           state: state)
    }

    /// Writes the row only if it is new or `version` is higher than the stored one; true if it wrote.
    static func saveIfNewer(_ db: Database, using upsert: Upsert, kind: EntityKind, id: String, version: UInt64, deleted: Bool,
                            state: [UInt8]) throws -> Bool {
        precondition(upsert.onlyIfNewer, "saveIfNewer needs the upsert that keeps newer rows")
        return try self.write(db, upsert, kind: kind, id: id, version: version, deleted: deleted, state: state)
    }

    /// The entity upsert's cached statement, looked up once for a batch of rows: GRDB's cache
    /// hashes the whole SQL text on every lookup. Valid within the access to `db` it came from.
    /// It is stepped without GRDB's statement hooks, so GRDB transaction observers (none are
    /// registered on these stores) would not see its changes.
    struct Upsert {
        fileprivate let statement: Statement
        fileprivate let sql: String
        let onlyIfNewer: Bool

        init(_ db: Database, onlyIfNewer: Bool) throws {
            // Two literal statements (each cached once), never input.
            self.sql = onlyIfNewer ? EntityTable.upsertIfNewerSQL : EntityTable.upsertSQL
            self.statement = try db.cachedStatement(sql: self.sql)
            self.onlyIfNewer = onlyIfNewer
        }
    }

    private static let upsertSQL = """
        INSERT INTO entities (kind, id, version, deleted, state, updated_at) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version, deleted = excluded.deleted,
            state = excluded.state, updated_at = excluded.updated_at
        """
    private static let upsertIfNewerSQL = upsertSQL + " WHERE entities.version < excluded.version"

    /// Stepped through `RawStep`: GRDB's `StatementArguments` cost a consumer about a tenth of
    /// its CPU per event in catch-up.
    private static func write(_ db: Database, _ upsert: Upsert, kind: EntityKind, id: String, version: UInt64, deleted: Bool,
                              state: [UInt8]) throws -> Bool {
        // Validation keeps versions within Int64; this keeps a caller that skipped it from trapping.
        guard let signed = Int64(exactly: version) else {
            throw SyncError(.invalidArgument, "version \(version) of \(kind.rawValue) '\(id)' is above \(Int64.max), "
                            + "the largest the store can hold")
        }
        let sql = upsert.sql
        try RawStep.requireTransaction(db, sql: sql)
        // Validation bounds ids and messages far below this; a caller that skipped it gets an error, not a trap.
        guard Int32(exactly: id.utf8.count) != nil, Int32(exactly: state.count) != nil else {
            throw DatabaseError(resultCode: .SQLITE_TOOBIG, message: "\(kind.rawValue) '\(id.prefix(64))' is too large to store",
                                sql: sql)
        }
        let now = Date().timeIntervalSince1970
        return try kind.rawValue.withCString { kindText in try id.withCString { idText in
            try state.withUnsafeBytes { stateBytes in
                try RawStep.run(upsert.statement, bind: { bind in
                    bind.text(1, kindText, count: kind.rawValue.utf8.count)
                    bind.text(2, idText, count: id.utf8.count)
                    bind.int64(3, signed)
                    bind.int64(4, deleted ? 1 : 0)
                    bind.blob(5, stateBytes)
                    bind.double(6, now)
                }) { code, _ in
                    guard code == SQLITE_DONE else { throw RawStep.failure(code, db, sql: sql) }
                    return sqlite3_changes(db.sqliteConnection) > 0
                }
            }
        } }
    }

    static func replaceMembers(_ db: Database, groupID: String, memberIDs: [String]) throws {
        try db.cachedStatement(sql: "DELETE FROM group_members WHERE group_id = ?").execute(arguments: [groupID])
        let insert = try db.cachedStatement(sql: "INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?, ?)")
        for member in memberIDs { try insert.execute(arguments: [groupID, member]) }
    }

    static func groupIDs(_ db: Database, containing userID: String) throws -> [String] {
        try String.fetchAll(db, sql: "SELECT group_id FROM group_members WHERE user_id = ? ORDER BY group_id",
                            arguments: [userID])
    }

    static func version(_ db: Database, kind: EntityKind, id: String) throws -> EntityVersion? {
        try self.fetch(db, kind: kind, id: id).map { EntityVersion(version: $0.version, deleted: $0.deleted) }
    }

    static func versions(_ db: Database, kind: EntityKind) throws -> [String: EntityVersion] {
        var result: [String: EntityVersion] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT id, version, deleted FROM entities WHERE kind = ?", arguments: [kind.rawValue]) {
            let version: Int64 = row["version"]
            result[row["id"]] = EntityVersion(version: UInt64(version), deleted: row["deleted"])
        }
        return result
    }

    /// Live entities' states after `after` in id order.
    static func states(_ db: Database, kind: EntityKind, after: String?, limit: Int) throws -> [[UInt8]] {
        try Data.fetchAll(db, sql: """
            SELECT state FROM entities WHERE kind = ? AND deleted = 0 AND id > ? ORDER BY id LIMIT ?
            """, arguments: [kind.rawValue, after ?? "", limit]).map { [UInt8]($0) }
    }

    static func users(_ db: Database, after: String?, limit: Int) throws -> [User] {
        try self.states(db, kind: .user, after: after, limit: limit).map { try User(serializedBytes: $0) }
    }

    static func groups(_ db: Database, after: String?, limit: Int) throws -> [Group] {
        try self.states(db, kind: .group, after: after, limit: limit).map { try Group(serializedBytes: $0) }
    }

    static func user(_ db: Database, id: String) throws -> User? {
        guard let stored = try self.fetch(db, kind: .user, id: id), !stored.deleted else { return nil }
        return try User(serializedBytes: stored.state)
    }

    static func group(_ db: Database, id: String) throws -> Group? {
        guard let stored = try self.fetch(db, kind: .group, id: id), !stored.deleted else { return nil }
        return try Group(serializedBytes: stored.state)
    }
}
