import EntitySyncCore
import EntitySyncProto
import Foundation
import GRDB
import SwiftProtobuf

/// A consumer group's copy in one SQLite file (WAL mode), shared by every instance of the
/// group on the host. Applying is one transaction that checks the version rule, so competing
/// instances, duplicates and reordering cannot make it regress.
public final class SQLiteReplicaStore: ReplicaStore, ImmediateReplicaReads {
    let database: SQLiteDatabase
    private let commitWatch: CommitWatch
    let pointReader: SQLitePointReader

    public init(path: String) throws {
        self.commitWatch = CommitWatch(path: path)
        self.pointReader = SQLitePointReader(path: path)
        self.database = try SQLiteDatabase(path: path) { migrator in
            migrator.registerMigration("replica-v1") { db in
                try EntityTable.create(db)
                try db.execute(sql: """
                    CREATE TABLE sync_statistics (
                        kind TEXT PRIMARY KEY NOT NULL,
                        applied INTEGER NOT NULL DEFAULT 0,
                        stale INTEGER NOT NULL DEFAULT 0,
                        dead_lettered INTEGER NOT NULL DEFAULT 0,
                        last_applied_at REAL
                    );
                    """)
            }
            // One row for the whole store (its instances share it): the snapshot load's start,
            // heartbeat and completion, and per entity type the marks of the load that completed.
            migrator.registerMigration("replica-v2") { db in
                try db.execute(sql: """
                    CREATE TABLE bootstrap (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        started_at REAL NOT NULL,
                        started_by TEXT NOT NULL,
                        attempts INTEGER NOT NULL,
                        heartbeat_at REAL NOT NULL,
                        completed_at REAL,
                        completed_by TEXT
                    );
                    CREATE TABLE bootstrap_marks (
                        kind TEXT PRIMARY KEY NOT NULL,
                        entities INTEGER NOT NULL,
                        highest_version INTEGER NOT NULL
                    );
                    """)
            }
        }
    }

    public func apply(_ change: ValidatedChange) async throws -> VersionRule.Decision {
        try await self.apply(batch: [change])[0]
    }

    /// One transaction, so one commit and one fsync, for the whole batch; each change sees the
    /// ones before it, so several versions of one entity in a batch end at the newest.
    public func apply(batch changes: [ValidatedChange]) async throws -> [VersionRule.Decision] {
        guard !changes.isEmpty else { return [] }
        return try await self.database.write { db -> [VersionRule.Decision] in
            var decisions: [VersionRule.Decision] = []
            decisions.reserveCapacity(changes.count)
            var counts: [EntityKind: (applied: Int, stale: Int)] = [:]
            let upsert = try EntityTable.Upsert(db, onlyIfNewer: true)
            for change in changes {
                let decision = try Self.applyOne(db, upsert, change)
                decisions.append(decision)
                if decision == .apply { counts[change.kind, default: (0, 0)].applied += 1 } else { counts[change.kind, default: (0, 0)].stale += 1 }
            }
            for (kind, count) in counts {
                try Self.count(db, kind, applied: count.applied, stale: count.stale)
            }
            return decisions
        }
    }

    /// One statement writes the row under the version rule (`WHERE stored < incoming`, the
    /// rule `VersionRule.decide` states); whether it wrote tells stale from applied.
    private static func applyOne(_ db: Database, _ upsert: EntityTable.Upsert, _ change: ValidatedChange) throws -> VersionRule.Decision {
        var state: [UInt8] = []
        var members: [String]?
        if change.isDelete {
            if change.kind == .group { members = [] }
        } else {
            switch change.change.state {
            case .user(var user)?:
                user.version = change.version
                state = try user.serializedBytes()
            case .group(var group)?:
                group.version = change.version
                state = try group.serializedBytes()
                members = group.memberIds
            case nil:
                // ChangeCodec.validate guarantees state for upserts; keep the store consistent anyway.
                throw SyncError(.invalidArgument, "upsert of \(change.kind.rawValue) '\(change.entityID)' without state")
            }
        }
        guard try EntityTable.saveIfNewer(db, using: upsert, kind: change.kind, id: change.entityID, version: change.version,
                                          deleted: change.isDelete, state: state) else { return .stale }
        if let members { try EntityTable.replaceMembers(db, groupID: change.entityID, memberIDs: members) }
        return .apply
    }

    /// Commits by any instance of the group wake the waiter within a few milliseconds.
    public func waitForCommit(timeout: Duration) async {
        await self.commitWatch.wait(timeout: timeout)
    }

    public func recordDeadLetter(_ kind: EntityKind) async throws {
        try await self.database.write { db in try Self.count(db, kind, column: "dead_lettered") }
    }

    public func user(id: String) async throws -> User? {
        try await self.database.read { db in try EntityTable.user(db, id: id) }
    }

    public func group(id: String) async throws -> Group? {
        try await self.database.read { db in try EntityTable.group(db, id: id) }
    }

    public func versions(of kind: EntityKind) async throws -> [String: EntityVersion] {
        try await self.database.read { db in try EntityTable.versions(db, kind: kind) }
    }

    /// On the calling thread, through the point reader: `WaitForVersion` reads first, and a hop
    /// to GRDB's reader queue and back was two thread wake-ups per call.
    public func version(of kind: EntityKind, id: String) async throws -> EntityVersion? {
        let session = try self.pointReader.session()
        defer { session.end() }
        return try session.version(of: kind, id: id)
    }

    /// Commits a write of one row of its own (its time, in `sync_statistics` under a kind no
    /// entity has), so a full disk, a read-only file or a write lock held past its wait shows
    /// here as it does to an apply: a store that can only be read is down for a consumer.
    public func checkReachable() async throws {
        let now = Date().timeIntervalSince1970
        try await self.database.write { db in
            try db.execute(sql: """
                INSERT INTO sync_statistics (kind, last_applied_at) VALUES (?, ?)
                ON CONFLICT (kind) DO UPDATE SET last_applied_at = excluded.last_applied_at
                """, arguments: [Self.probeKind, now])
        }
    }

    /// The `sync_statistics` row the write probe touches; statistics are read per entity kind.
    static let probeKind = "store-probe"

    /// On the calling thread, the reads after the first sharing one read transaction.
    public func versions(of entities: [(kind: EntityKind, id: String)]) async throws -> [EntityVersion?] {
        let session = try self.pointReader.session()
        defer { session.end() }
        return try entities.map { try session.version(of: $0.kind, id: $0.id) }
    }

    public func listUsers(after: String?, limit: Int) async throws -> [User] {
        try await self.database.read { db in try EntityTable.users(db, after: after, limit: limit) }
    }

    public func listGroups(after: String?, limit: Int) async throws -> [Group] {
        try await self.database.read { db in try EntityTable.groups(db, after: after, limit: limit) }
    }

    public func users(ids: [String]) async throws -> [User] {
        try await self.database.read { db in try ids.compactMap { try EntityTable.user(db, id: $0) } }
    }

    public func groups(ofUser userID: String, after: String?, limit: Int) async throws -> [Group] {
        try await self.database.read { db in try Self.groups(db, ofUser: userID, after: after, limit: limit) }
    }

    public func userWithGroups(id: String, groupLimit: Int) async throws -> UserWithGroups? {
        try await self.database.read { db in try Self.userWithGroups(db, id: id, groupLimit: groupLimit) }
    }

    public func readSession() throws -> any ImmediateReadSession {
        try self.pointReader.session()
    }

    private static func userWithGroups(_ db: Database, id: String, groupLimit: Int) throws -> UserWithGroups? {
        guard let user = try EntityTable.user(db, id: id) else { return nil }
        return (user, try self.groups(db, ofUser: id, after: nil, limit: groupLimit))
    }

    private static func groups(_ db: Database, ofUser userID: String, after: String?, limit: Int) throws -> [Group] {
        let statement = try db.cachedStatement(sql: """
            SELECT e.state FROM group_members m JOIN entities e ON e.kind = 'group' AND e.id = m.group_id
            WHERE m.user_id = ? AND e.deleted = 0 AND m.group_id > ? ORDER BY m.group_id LIMIT ?
            """)
        var groups: [Group] = []
        let rows = try Data.fetchCursor(statement, arguments: [userID, after ?? "", limit])
        while let state = try rows.next() { groups.append(try Group(serializedBytes: [UInt8](state))) }
        return groups
    }

    public func members(ofGroup groupID: String, after: String?, limit: Int) async throws -> [User] {
        try await self.database.read { db in
            try Data.fetchAll(db, sql: """
                SELECT e.state FROM group_members m JOIN entities e ON e.kind = 'user' AND e.id = m.user_id
                WHERE m.group_id = ? AND e.deleted = 0 AND m.user_id > ? ORDER BY m.user_id LIMIT ?
                """, arguments: [groupID, after ?? "", limit]).map { try User(serializedBytes: [UInt8]($0)) }
        }
    }

    public func statistics() async throws -> [EntityKind: ReplicaStatistics] {
        try await self.database.read { db in
            var result: [EntityKind: ReplicaStatistics] = [:]
            for kind in EntityKind.allCases {
                var statistics = ReplicaStatistics()
                if let row = try Row.fetchOne(db, sql: """
                    SELECT COUNT(*) FILTER (WHERE deleted = 0) AS live, MAX(version) AS highest FROM entities WHERE kind = ?
                    """, arguments: [kind.rawValue]) {
                    statistics.entities = row["live"] ?? 0
                    statistics.highestVersion = UInt64(row["highest"] as Int64? ?? 0)
                }
                if let row = try Row.fetchOne(db, sql: "SELECT * FROM sync_statistics WHERE kind = ?", arguments: [kind.rawValue]) {
                    statistics.applied = row["applied"]
                    statistics.stale = row["stale"]
                    statistics.deadLettered = row["dead_lettered"]
                    statistics.lastAppliedAt = (row["last_applied_at"] as Double?).map { Date(timeIntervalSince1970: $0) }
                }
                result[kind] = statistics
            }
            return result
        }
    }

    public func bootstrapRecord() async throws -> BootstrapRecord? {
        try await self.database.read { db in try Self.bootstrapRecord(db) }
    }

    public func beginBootstrap(instance: String, covering kinds: Set<EntityKind>, at time: Date) async throws -> BootstrapRecord {
        try await self.database.write { db in
            // Checked and written in one transaction: an instance that finds the load completed
            // by another must not turn it back into "started".
            if let record = try Self.bootstrapRecord(db), record.covers(kinds) { return record }
            try db.execute(sql: """
                INSERT INTO bootstrap (id, started_at, started_by, attempts, heartbeat_at) VALUES (1, ?, ?, 1, ?)
                ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, started_by = excluded.started_by,
                    attempts = attempts + 1, heartbeat_at = excluded.heartbeat_at, completed_at = NULL, completed_by = NULL
                """, arguments: [time.timeIntervalSince1970, instance, time.timeIntervalSince1970])
            guard let record = try Self.bootstrapRecord(db) else {
                throw SyncError(.storeUnavailable, "the bootstrap record just written to the replica store is missing")
            }
            return record
        }
    }

    public func touchBootstrap(instance: String, at time: Date) async throws {
        try await self.database.write { db in
            try db.execute(sql: "UPDATE bootstrap SET heartbeat_at = ? WHERE completed_at IS NULL",
                           arguments: [time.timeIntervalSince1970])
        }
    }

    public func completeBootstrap(instance: String, marks: [EntityKind: SnapshotMark], at time: Date) async throws {
        try await self.database.write { db in
            let now = time.timeIntervalSince1970
            try db.execute(sql: """
                INSERT INTO bootstrap (id, started_at, started_by, attempts, heartbeat_at, completed_at, completed_by)
                VALUES (1, ?, ?, 1, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, completed_at = excluded.completed_at,
                    completed_by = excluded.completed_by
                """, arguments: [now, instance, now, now, instance])
            // Merged per type, not replaced: instances rolled out with different entity types (a
            // routing change) must not erase each other's coverage and reload for ever.
            for (kind, mark) in marks {
                try db.execute(sql: """
                    INSERT INTO bootstrap_marks (kind, entities, highest_version) VALUES (?, ?, ?)
                    ON CONFLICT (kind) DO UPDATE SET entities = excluded.entities, highest_version = excluded.highest_version
                    """,
                               arguments: [kind.rawValue, mark.entities, Int64(clamping: mark.highestVersion)])
            }
        }
    }

    private static func bootstrapRecord(_ db: Database) throws -> BootstrapRecord? {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM bootstrap WHERE id = 1") else { return nil }
        var marks: [EntityKind: SnapshotMark] = [:]
        for mark in try Row.fetchAll(db, sql: "SELECT * FROM bootstrap_marks") {
            // A kind this build does not know (written by a newer one) is left out, not fatal.
            guard let kind = EntityKind(rawValue: mark["kind"]) else { continue }
            let highest: Int64 = mark["highest_version"]
            marks[kind] = SnapshotMark(entities: mark["entities"], highestVersion: UInt64(clamping: highest))
        }
        return BootstrapRecord(startedAt: Date(timeIntervalSince1970: row["started_at"]), startedBy: row["started_by"],
                               attempts: row["attempts"], heartbeatAt: Date(timeIntervalSince1970: row["heartbeat_at"]),
                               completedAt: (row["completed_at"] as Double?).map { Date(timeIntervalSince1970: $0) },
                               completedBy: row["completed_by"], marks: marks)
    }

    /// Adds to a kind's applied and stale counters in one statement.
    private static func count(_ db: Database, _ kind: EntityKind, applied: Int, stale: Int) throws {
        try db.cachedStatement(sql: """
            INSERT INTO sync_statistics (kind, applied, stale, last_applied_at) VALUES (?, ?, ?, ?)
            ON CONFLICT (kind) DO UPDATE SET applied = applied + excluded.applied, stale = stale + excluded.stale,
                last_applied_at = COALESCE(excluded.last_applied_at, last_applied_at)
            """).execute(arguments: [kind.rawValue, applied, stale, applied > 0 ? Date().timeIntervalSince1970 : nil])
    }

    private static func count(_ db: Database, _ kind: EntityKind, column: String, touch: Bool = false) throws {
        // `column` is one of three literals chosen in this file, never input.
        try db.execute(sql: """
            INSERT INTO sync_statistics (kind, \(column), last_applied_at) VALUES (?, 1, ?)
            ON CONFLICT (kind) DO UPDATE SET \(column) = \(column) + 1\(touch ? ", last_applied_at = excluded.last_applied_at" : "")
            """, arguments: [kind.rawValue, touch ? Date().timeIntervalSince1970 : nil])
    }
}
