import EntitySyncCore
import Foundation
import GRDB
import Synchronization

/// Opens a SQLite file in WAL mode, shared safely by several processes on one host, and maps
/// SQLite failures to `SyncError.storeUnavailable` with the file's path.
struct SQLiteDatabase: Sendable {
    let pool: DatabasePool
    let path: String
    private let group: GroupCommit

    /// Waits for another connection's write lock, 10 s at most. SQLite's own handler sleeps
    /// 1, 2, 5, 10 … up to 100 ms between tries: an instance of a group that found the file
    /// locked by another's batch slept through the hand-over and the batches after it, so a
    /// second instance per group added little. Short, even sleeps let the instances take turns.
    /// Only the writer connection uses it (GRDB gives its readers SQLite's own handler).
    final class LockWait: Sendable {
        static let limit = Duration.seconds(10)
        /// How many times the writer found the lock taken (for tests).
        let waits = Atomic<Int>(0)
        private let since = Mutex<ContinuousClock.Instant?>(nil)

        /// GRDB's busy callback: `tries` counts the calls for one wait, from 0.
        func shouldRetry(_ tries: Int) -> Bool {
            let now = ContinuousClock.now
            let since = self.since.withLock { since in
                if tries == 0 || since == nil { since = now }
                return since ?? now
            }
            if tries == 0 { self.waits.add(1, ordering: .relaxed) }
            // Timed, not counted: a loaded machine oversleeps short sleeps many times over.
            guard now - since < Self.limit else { return false }
            usleep(tries < 50 ? 100 : 500)
            return true
        }
    }

    let lockWait = LockWait()

    init(path: String, migrations: (inout DatabaseMigrator) -> Void) throws {
        var configuration = Configuration()
        // Several instances write the same file: wait for the lock rather than fail at once.
        let lockWait = self.lockWait
        configuration.busyMode = .callback { tries in lockWait.shouldRetry(tries) }
        configuration.prepareDatabase { db in
            // FULL in WAL mode fsyncs the log at every commit: a change acked to the broker,
            // published or replied to a caller survives a power loss. NORMAL could lose the last
            // commits. Batched applies and group commit make one fsync cover many changes.
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        do {
            let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            var migrator = DatabaseMigrator()
            migrations(&migrator)
            self.pool = try Self.open(path: path, configuration: configuration, migrator: migrator)
        } catch {
            // A file that cannot be opened or migrated now will not open by waiting (a busy one
            // was retried above): a configuration error, which ends a service's start.
            throw SyncError(.configuration, "could not open the SQLite store at '\(path)': \(error). Check that the "
                            + "directory exists and is writable, and that the file is an EntitySync store.")
        }
        self.path = path
        self.group = GroupCommit(pool: self.pool)
    }

    /// Instances of one group may open a new file at the same moment. Switching it to WAL and
    /// creating the schema race: the losers fail ("database is locked", "table already exists").
    /// Tried again, they find WAL on and the winner's migration applied.
    private static func open(path: String, configuration: Configuration, migrator: DatabaseMigrator) throws -> DatabasePool {
        var attempt = 0
        while true {
            do {
                let pool = try DatabasePool(path: path, configuration: configuration)
                // GRDB turns the writer to NORMAL when it switches the file to WAL, after
                // `prepareDatabase`: set FULL again on the one connection that commits.
                try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
                try migrator.migrate(pool)
                return pool
            } catch is DatabaseError where attempt < 20 {
                attempt += 1
                usleep(useconds_t(10_000 * attempt))
            }
        }
    }

    /// `PRAGMA synchronous` as the writer connection and a reader connection see it (2 is FULL).
    func synchronousSettings() async throws -> (writer: Int, reader: Int) {
        let writer = try await self.write { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
        let reader = try await self.read { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
        return (writer, reader)
    }

    /// Runs a TRUNCATE checkpoint: whether a reader's snapshot held it back (`busy`), and the
    /// frames left in the log.
    func checkpointTruncate() throws -> (busy: Bool, logFrames: Int) {
        try self.pool.writeWithoutTransaction { db in
            let row = try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)")
            return ((row?[0] as Int?) != 0, row?[1] ?? -1)
        }
    }

    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await self.translatingErrors { try await self.pool.write(body) }
    }

    /// Like `write`, but in a transaction shared with the writes submitted meanwhile
    /// (`GroupCommit`): for many concurrent small writes, one commit and one fsync.
    func groupWrite<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await self.translatingErrors { try await self.group.write(body) }
    }

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await self.translatingErrors { try await self.pool.read(body) }
    }

    /// SyncErrors pass through; anything else from SQLite is the store failing, named by path.
    private func translatingErrors<T>(_ work: () async throws -> T) async throws -> T {
        do {
            return try await work()
        } catch let error as SyncError {
            throw error
        } catch {
            throw SyncError(.storeUnavailable, "the SQLite store at '\(self.path)' failed: \(error)")
        }
    }
}
