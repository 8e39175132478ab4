import EntitySyncCore
import EntitySyncProto
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// A consumer group's copy in PostgreSQL, shared by the group's instances on any hosts.
/// Applying is one transaction whose write carries the version rule
/// (`… ON CONFLICT … WHERE stored.version < excluded.version`), so competing instances,
/// duplicates and reordering cannot make it regress. Counters and bootstrap state live here too.
public final class PostgresReplicaStore: ReplicaStore, PostgresEntityReads {
    let database: PostgresDatabase
    private let bootstrapLock: String
    private let commitWatch: PostgresCommitWatch

    static let migrations = [
        PostgresDatabase.Migration(version: 1, statements: PostgresEntityTable.create + [
            """
            CREATE TABLE sync_statistics (
                kind TEXT PRIMARY KEY,
                applied BIGINT NOT NULL DEFAULT 0,
                stale BIGINT NOT NULL DEFAULT 0,
                dead_lettered BIGINT NOT NULL DEFAULT 0,
                last_applied_at DOUBLE PRECISION
            )
            """,
            """
            CREATE TABLE bootstrap (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                started_at DOUBLE PRECISION NOT NULL,
                started_by TEXT NOT NULL,
                attempts BIGINT NOT NULL,
                heartbeat_at DOUBLE PRECISION NOT NULL,
                completed_at DOUBLE PRECISION,
                completed_by TEXT
            )
            """,
            """
            CREATE TABLE bootstrap_marks (
                kind TEXT PRIMARY KEY,
                entities BIGINT NOT NULL,
                highest_version BIGINT NOT NULL
            )
            """,
        ]),
    ]

    /// Connects to the database at `url` and creates or migrates the group's schema: by default
    /// `entitysync_<group>` (dashes become underscores), so several groups can share a database.
    public init(url: PostgresURL, group: String, logger: Logger = Logger(label: "entitysync.postgres")) async throws {
        self.database = try await PostgresDatabase(url: url, kind: "replica of \(group)", defaultSchema: Self.defaultSchema(group: group),
                                                   migrations: Self.migrations, logger: logger)
        self.bootstrapLock = "entitysync-bootstrap:\(self.database.schema)"
        self.commitWatch = PostgresCommitWatch(database: self.database)
    }

    /// The schema a group's store uses unless its URL names one.
    public static func defaultSchema(group: String) -> String {
        let cleaned = String(group.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
        return String("entitysync_\(cleaned)".prefix(63))
    }

    deinit {
        // The listener's task holds the watch (and through it the pool) until stopped.
        self.commitWatch.stop()
    }

    /// Closes the store's connections.
    public func close() {
        self.commitWatch.stop()
        self.database.close()
    }

    /// Commits by any instance of the group wake the waiter (NOTIFY after commit, LISTEN on the
    /// schema's name).
    public func waitForCommit(timeout: Duration) async {
        await self.commitWatch.wait(timeout: timeout)
    }

    public func apply(_ change: ValidatedChange) async throws -> VersionRule.Decision {
        // A group's members must change after its row is written, in a statement of their own
        // (one statement's parts share one snapshot, and would miss members another instance
        // committed meanwhile): a transaction. A user's change is one statement, one round trip.
        if change.kind == .group {
            return try await self.applyGroup(change)
        }
        var state: [UInt8] = []
        if !change.isDelete {
            guard case .user(var user)? = change.change.state else {
                // ChangeCodec.validate guarantees state for upserts; keep the store consistent anyway.
                throw SyncError(.invalidArgument, "upsert of \(change.kind.rawValue) '\(change.entityID)' without state")
            }
            user.version = change.version
            state = try user.serializedBytes()
        }
        guard let version = Int64(exactly: change.version) else {
            throw SyncError(.invalidArgument, "version \(change.version) of \(change.kind.rawValue) '\(change.entityID)' is "
                            + "above \(Int64.max), the largest the store can hold")
        }
        let (kind, id, deleted, bytes) = (change.kind.rawValue, change.entityID, change.isDelete, ByteBuffer(bytes: state))
        let now = Date().timeIntervalSince1970
        let decision: VersionRule.Decision = try await self.database.read("apply a change") { sql in
            // Data-modifying CTEs all run, in one statement, so atomically: the write under the
            // version rule and the counters.
            let rows = try await sql.rows("""
                WITH written AS (
                    INSERT INTO entities (kind, id, version, deleted, state, updated_at)
                    VALUES (\(kind), \(id), \(version), \(deleted), \(bytes), \(now))
                    ON CONFLICT (kind, id) DO UPDATE SET version = EXCLUDED.version, deleted = EXCLUDED.deleted,
                        state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
                    WHERE entities.version < EXCLUDED.version
                    RETURNING 1
                ), counted AS (
                    INSERT INTO sync_statistics AS s (kind, applied, stale, last_applied_at)
                    SELECT \(kind), count(*), 1 - count(*), CASE WHEN count(*) > 0 THEN \(now)::float8 END FROM written
                    ON CONFLICT (kind) DO UPDATE SET applied = s.applied + EXCLUDED.applied, stale = s.stale + EXCLUDED.stale,
                        last_applied_at = COALESCE(EXCLUDED.last_applied_at, s.last_applied_at)
                )
                SELECT count(*) FROM written
                """)
            let wrote = try rows.first.map { try $0.decode(Int.self) } ?? 0
            return wrote > 0 ? .apply : .stale
        }
        if decision == .apply { self.commitWatch.announce() }
        return decision
    }

    /// Changes per transaction: a batch's round trips (one per user, three per group) must fit
    /// the store's 10 s deadline with room to spare, even on a distant server.
    static let changesPerTransaction = 32

    /// One transaction, so one commit and one WAL flush, per `changesPerTransaction` changes.
    /// Rows are written in (kind, id) order, so that instances applying overlapping batches lock
    /// them in one order and cannot deadlock; each entity's versions keep their delivery order,
    /// so several versions of one entity end at the newest.
    public func apply(batch changes: [ValidatedChange]) async throws -> [VersionRule.Decision] {
        if changes.count == 1 { return [try await self.apply(changes[0])] }
        var decisions = [VersionRule.Decision](repeating: .stale, count: changes.count)
        let rows = try changes.map(Self.row)
        // Stable: equal keys keep delivery order.
        let order = rows.indices.sorted { (rows[$0].kind.rawValue, rows[$0].id, $0) < (rows[$1].kind.rawValue, rows[$1].id, $1) }
        var start = 0
        while start < order.count {
            let chunk = Array(order[start..<min(start + Self.changesPerTransaction, order.count)])
            let chunkRows = chunk.map { rows[$0] }
            let wrote = try await self.applyRows(chunkRows)
            for (index, didWrite) in zip(chunk, wrote) { decisions[index] = didWrite ? .apply : .stale }
            start += chunk.count
        }
        return decisions
    }

    /// Writes `rows` in order in one transaction with their counters; whether each one wrote.
    private func applyRows(_ rows: [ChangeRow]) async throws -> [Bool] {
        let results = try await self.database.transaction("apply \(rows.count) changes") { sql in
            var results: [Bool] = []
            results.reserveCapacity(rows.count)
            var counts: [EntityKind: (applied: Int, stale: Int)] = [:]
            for row in rows {
                let wrote = try await PostgresEntityTable.saveIfNewer(sql, kind: row.kind, id: row.id, version: row.version,
                                                                      deleted: row.deleted, state: row.state)
                if wrote, row.kind == .group {
                    try await PostgresEntityTable.replaceMembers(sql, groupID: row.id, memberIDs: row.members)
                }
                results.append(wrote)
                if wrote { counts[row.kind, default: (0, 0)].applied += 1 } else { counts[row.kind, default: (0, 0)].stale += 1 }
            }
            let now = Date().timeIntervalSince1970
            // In one order on every instance, so that two never wait on each other's rows.
            for (kind, count) in counts.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                let touched: Double? = count.applied > 0 ? now : nil
                try await sql.execute("""
                    INSERT INTO sync_statistics AS s (kind, applied, stale, last_applied_at)
                    VALUES (\(kind.rawValue), \(count.applied), \(count.stale), \(touched))
                    ON CONFLICT (kind) DO UPDATE SET applied = s.applied + EXCLUDED.applied, stale = s.stale + EXCLUDED.stale,
                        last_applied_at = COALESCE(EXCLUDED.last_applied_at, s.last_applied_at)
                    """)
            }
            return results
        }
        if results.contains(true) { self.commitWatch.announce() }
        return results
    }

    /// What a change writes: its row (state serialized with the version in it) and a group's members.
    private struct ChangeRow: Sendable {
        var kind: EntityKind
        var id: String
        var version: UInt64
        var deleted: Bool
        var state: [UInt8]
        var members: [String]
    }

    private static func row(_ change: ValidatedChange) throws -> ChangeRow {
        var row = ChangeRow(kind: change.kind, id: change.entityID, version: change.version, deleted: change.isDelete,
                            state: [], members: [])
        guard !change.isDelete else { return row }
        switch change.change.state {
        case .user(var user)?:
            user.version = change.version
            row.state = try user.serializedBytes()
        case .group(var group)?:
            group.version = change.version
            row.state = try group.serializedBytes()
            row.members = group.memberIds
        case nil:
            // ChangeCodec.validate guarantees state for upserts; keep the store consistent anyway.
            throw SyncError(.invalidArgument, "upsert of \(change.kind.rawValue) '\(change.entityID)' without state")
        }
        return row
    }

    /// A group's upsert or deletion: its row under the version rule, then (if written) its
    /// members replaced or cleared, then the counters, in one transaction.
    private func applyGroup(_ change: ValidatedChange) async throws -> VersionRule.Decision {
        var state: [UInt8] = []
        var members: [String] = []
        if !change.isDelete {
            guard case .group(var group)? = change.change.state else {
                throw SyncError(.invalidArgument, "upsert of group '\(change.entityID)' without state")
            }
            group.version = change.version
            state = try group.serializedBytes()
            members = group.memberIds
        }
        let (id, version, deleted, memberIDs, bytes) = (change.entityID, change.version, change.isDelete, members, state)
        let decision: VersionRule.Decision = try await self.database.transaction("apply a change") { sql in
            let wrote = try await PostgresEntityTable.saveIfNewer(sql, kind: .group, id: id, version: version,
                                                                  deleted: deleted, state: bytes)
            if wrote { try await PostgresEntityTable.replaceMembers(sql, groupID: id, memberIDs: memberIDs) }
            try await Self.count(sql, .group, column: wrote ? "applied" : "stale", touch: wrote)
            return wrote ? .apply : .stale
        }
        if decision == .apply { self.commitWatch.announce() }
        return decision
    }

    public func recordDeadLetter(_ kind: EntityKind) async throws {
        try await self.database.read("count a dead letter") { sql in try await Self.count(sql, kind, column: "dead_lettered") }
    }

    /// Commits a write of one row of its own (its time, in `sync_statistics` under a kind no
    /// entity has) after taking the lock an apply takes on every table it writes, so a
    /// read-only server, a full disk or a table locked past the deadline (a migration, a
    /// `VACUUM FULL`) shows here as it does to an apply: a store that can only be read is down
    /// for a consumer.
    public func checkReachable() async throws {
        let now = Date().timeIntervalSince1970
        let kind = "store-probe"
        try await self.database.transaction("check the store takes writes") { sql in
            try await sql.execute("LOCK TABLE entities, group_members, sync_statistics IN ROW EXCLUSIVE MODE")
            try await sql.execute("""
                INSERT INTO sync_statistics (kind, last_applied_at) VALUES (\(kind), \(now))
                ON CONFLICT (kind) DO UPDATE SET last_applied_at = EXCLUDED.last_applied_at
                """)
        }
    }

    public func version(of kind: EntityKind, id: String) async throws -> EntityVersion? {
        try await self.database.read("read a version") { sql in try await PostgresEntityTable.version(sql, kind: kind, id: id) }
    }

    /// One query for all of them: a version sweep of many waiters costs one round trip, not one each.
    public func versions(of entities: [(kind: EntityKind, id: String)]) async throws -> [EntityVersion?] {
        guard !entities.isEmpty else { return [] }
        let kinds = entities.map(\.kind.rawValue)
        let ids = entities.map(\.id)
        let found = try await self.database.read("read versions") { sql in
            try await sql.rows("""
                SELECT e.kind, e.id, e.version, e.deleted FROM entities e
                JOIN unnest(\(kinds)::text[], \(ids)::text[]) AS asked(kind, id) ON e.kind = asked.kind AND e.id = asked.id
                """).map { row in
                    let (kind, id, version, deleted) = try row.decode((String, String, Int64, Bool).self)
                    return (key: "\(kind)/\(id)", version: EntityVersion(version: UInt64(clamping: version), deleted: deleted))
                }
        }
        let byKey = Dictionary(found.map { ($0.key, $0.version) }, uniquingKeysWith: { first, _ in first })
        return entities.map { byKey["\($0.kind.rawValue)/\($0.id)"] }
    }

    public func users(ids: [String]) async throws -> [User] {
        guard !ids.isEmpty else { return [] }
        let found = try await self.database.read("read users") { sql in
            try await sql.rows("""
                SELECT state FROM entities WHERE kind = 'user' AND NOT deleted AND id = ANY(\(Array(Set(ids))))
                """).map { try User(serializedBytes: Array(try $0.decode(ByteBuffer.self).readableBytesView)) }
        }
        let byID = Dictionary(found.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        return ids.compactMap { byID[$0] }
    }

    public func groups(ofUser userID: String, after: String?, limit: Int) async throws -> [Group] {
        try await self.database.read("read a user's groups") { sql in
            try await sql.rows("""
                SELECT e.state FROM group_members m JOIN entities e ON e.kind = 'group' AND e.id = m.group_id
                WHERE m.user_id = \(userID) AND NOT e.deleted AND m.group_id > \(after ?? "") ORDER BY m.group_id LIMIT \(limit)
                """).map { try Group(serializedBytes: Array(try $0.decode(ByteBuffer.self).readableBytesView)) }
        }
    }

    public func members(ofGroup groupID: String, after: String?, limit: Int) async throws -> [User] {
        try await self.database.read("read a group's members") { sql in
            try await sql.rows("""
                SELECT e.state FROM group_members m JOIN entities e ON e.kind = 'user' AND e.id = m.user_id
                WHERE m.group_id = \(groupID) AND NOT e.deleted AND m.user_id > \(after ?? "") ORDER BY m.user_id LIMIT \(limit)
                """).map { try User(serializedBytes: Array(try $0.decode(ByteBuffer.self).readableBytesView)) }
        }
    }

    public func statistics() async throws -> [EntityKind: ReplicaStatistics] {
        try await self.database.read("read statistics") { sql in
            var result: [EntityKind: ReplicaStatistics] = [:]
            for kind in EntityKind.allCases {
                var statistics = ReplicaStatistics()
                if let row = try await sql.rows("""
                    SELECT count(*) FILTER (WHERE NOT deleted), max(version) FROM entities WHERE kind = \(kind.rawValue)
                    """).first {
                    let (live, highest) = try row.decode((Int, Int64?).self)
                    statistics.entities = live
                    statistics.highestVersion = UInt64(clamping: highest ?? 0)
                }
                if let row = try await sql.rows("""
                    SELECT applied, stale, dead_lettered, last_applied_at FROM sync_statistics WHERE kind = \(kind.rawValue)
                    """).first {
                    let (applied, stale, deadLettered, last) = try row.decode((Int, Int, Int, Double?).self)
                    statistics.applied = applied
                    statistics.stale = stale
                    statistics.deadLettered = deadLettered
                    statistics.lastAppliedAt = last.map { Date(timeIntervalSince1970: $0) }
                }
                result[kind] = statistics
            }
            return result
        }
    }

    // MARK: Bootstrap

    public func bootstrapRecord() async throws -> BootstrapRecord? {
        try await self.database.read("read the bootstrap record") { sql in try await Self.bootstrapRecord(sql) }
    }

    public func beginBootstrap(instance: String, covering kinds: Set<EntityKind>, at time: Date) async throws -> BootstrapRecord {
        let lock = self.bootstrapLock
        return try await self.database.transaction("record a bootstrap start") { sql in
            // Checked and written under one lock: an instance that finds the load completed by
            // another must not turn it back into "started".
            try await sql.lock(lock)
            if let record = try await Self.bootstrapRecord(sql), record.covers(kinds) { return record }
            let now = time.timeIntervalSince1970
            try await sql.execute("""
                INSERT INTO bootstrap (id, started_at, started_by, attempts, heartbeat_at) VALUES (1, \(now), \(instance), 1, \(now))
                ON CONFLICT (id) DO UPDATE SET started_at = EXCLUDED.started_at, started_by = EXCLUDED.started_by,
                    attempts = bootstrap.attempts + 1, heartbeat_at = EXCLUDED.heartbeat_at, completed_at = NULL,
                    completed_by = NULL
                """)
            guard let record = try await Self.bootstrapRecord(sql) else {
                throw SyncError(.storeUnavailable, "the bootstrap record just written to the replica store is missing")
            }
            return record
        }
    }

    public func touchBootstrap(instance: String, at time: Date) async throws {
        try await self.database.read("record a bootstrap heartbeat") { sql in
            try await sql.execute("UPDATE bootstrap SET heartbeat_at = \(time.timeIntervalSince1970) WHERE completed_at IS NULL")
        }
    }

    public func completeBootstrap(instance: String, marks: [EntityKind: SnapshotMark], at time: Date) async throws {
        let lock = self.bootstrapLock
        try await self.database.transaction("record a bootstrap completion") { sql in
            try await sql.lock(lock)
            let now = time.timeIntervalSince1970
            try await sql.execute("""
                INSERT INTO bootstrap (id, started_at, started_by, attempts, heartbeat_at, completed_at, completed_by)
                VALUES (1, \(now), \(instance), 1, \(now), \(now), \(instance))
                ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, completed_at = EXCLUDED.completed_at,
                    completed_by = EXCLUDED.completed_by
                """)
            // Merged per type, not replaced: instances rolled out with different entity types
            // must not erase each other's coverage and reload for ever.
            for (kind, mark) in marks {
                try await sql.execute("""
                    INSERT INTO bootstrap_marks (kind, entities, highest_version)
                    VALUES (\(kind.rawValue), \(mark.entities), \(Int64(clamping: mark.highestVersion)))
                    ON CONFLICT (kind) DO UPDATE SET entities = EXCLUDED.entities, highest_version = EXCLUDED.highest_version
                    """)
            }
        }
    }

    private static func bootstrapRecord(_ sql: SQL) async throws -> BootstrapRecord? {
        guard let row = try await sql.rows("""
            SELECT started_at, started_by, attempts, heartbeat_at, completed_at, completed_by FROM bootstrap WHERE id = 1
            """).first else { return nil }
        let (startedAt, startedBy, attempts, heartbeatAt, completedAt, completedBy) =
            try row.decode((Double, String, Int, Double, Double?, String?).self)
        var marks: [EntityKind: SnapshotMark] = [:]
        for mark in try await sql.rows("SELECT kind, entities, highest_version FROM bootstrap_marks") {
            let (kindName, entities, highest) = try mark.decode((String, Int, Int64).self)
            // A kind this build does not know (written by a newer one) is left out, not fatal.
            guard let kind = EntityKind(rawValue: kindName) else { continue }
            marks[kind] = SnapshotMark(entities: entities, highestVersion: UInt64(clamping: highest))
        }
        return BootstrapRecord(startedAt: Date(timeIntervalSince1970: startedAt), startedBy: startedBy, attempts: attempts,
                               heartbeatAt: Date(timeIntervalSince1970: heartbeatAt),
                               completedAt: completedAt.map { Date(timeIntervalSince1970: $0) },
                               completedBy: completedBy, marks: marks)
    }

    private static func count(_ sql: SQL, _ kind: EntityKind, column: String, touch: Bool = false) async throws {
        // `column` is one of three literals chosen in this file, never input.
        var binds = PostgresBindings()
        binds.append(kind.rawValue)
        binds.append(touch ? Date().timeIntervalSince1970 : nil)
        try await sql.execute(PostgresQuery(unsafeSQL: """
            INSERT INTO sync_statistics (kind, \(column), last_applied_at) VALUES ($1, 1, $2)
            ON CONFLICT (kind) DO UPDATE SET \(column) = sync_statistics.\(column) + 1\(
                touch ? ", last_applied_at = EXCLUDED.last_applied_at" : "")
            """, binds: binds))
    }
}
