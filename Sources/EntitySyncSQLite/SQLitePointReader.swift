import EntitySyncCore
import GRDBSQLite
import SwiftProtobuf
import Synchronization

/// Point reads on the calling thread, on read-only SQLite connections of its own with their
/// statements prepared once: the gRPC server answers GetUser on its event loop with this, with
/// no hop to GRDB's reader queue and no statement parsing or column lookup by name per call.
/// A connection serves one caller at a time; there are as many as callers at once (about the
/// server's loop threads).
final class SQLitePointReader: Sendable {
    /// One read-only connection and its prepared statements. Sendable by hand: a connection is
    /// used by the one session that took it out of `idle` and put back only when that session
    /// has ended, so no two threads ever touch it at once.
    fileprivate final class Connection: @unchecked Sendable {
        let handle: OpaquePointer
        let userWithGroups: OpaquePointer
        let version: OpaquePointer
        let begin: OpaquePointer
        let commit: OpaquePointer

        init(path: String) throws {
            var handle: OpaquePointer?
            let flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX
            guard sqlite3_open_v2(path, &handle, flags, nil) == SQLITE_OK, let handle else {
                let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
                sqlite3_close(handle)
                throw SyncError(.storeUnavailable, "could not open the SQLite store at '\(path)' for reading: \(message)")
            }
            // The caller is an event loop serving many connections: a WAL reader is only ever
            // busy briefly (another process recovering the log), and must not hold the loop long.
            sqlite3_busy_timeout(handle, 100)
            // One statement, so one read transaction: the user and its groups as of one commit.
            // Row kind 0 is the user (with its tombstone flag), kind 1 its live groups in id order.
            let sql = """
                SELECT 0, deleted, state FROM entities WHERE kind = 'user' AND id = ?1
                UNION ALL
                SELECT 1, 0, state FROM (SELECT e.state FROM group_members m
                    JOIN entities e ON e.kind = 'group' AND e.id = m.group_id
                    WHERE m.user_id = ?1 AND e.deleted = 0 ORDER BY m.group_id LIMIT ?2)
                """
            var statements: [OpaquePointer] = []
            let version = "SELECT version, deleted FROM entities WHERE kind = ?1 AND id = ?2"
            for text in [sql, version, "BEGIN", "COMMIT"] {
                var statement: OpaquePointer?
                guard sqlite3_prepare_v3(handle, text, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil) == SQLITE_OK,
                      let statement else {
                    let message = String(cString: sqlite3_errmsg(handle))
                    for prepared in statements { sqlite3_finalize(prepared) }
                    sqlite3_close(handle)
                    throw SyncError(.storeUnavailable, "the SQLite store at '\(path)' cannot be read (\(message)): is it an EntitySync replica?")
                }
                statements.append(statement)
            }
            self.handle = handle
            self.userWithGroups = statements[0]
            self.version = statements[1]
            self.begin = statements[2]
            self.commit = statements[3]
        }

        deinit {
            for statement in [self.userWithGroups, self.version, self.begin, self.commit] { sqlite3_finalize(statement) }
            sqlite3_close(self.handle)
        }

        /// Runs a statement without results (BEGIN, COMMIT); whether it succeeded.
        func run(_ statement: OpaquePointer) -> Bool {
            defer { sqlite3_reset(statement) }
            return sqlite3_step(statement) == SQLITE_DONE
        }
    }

    /// Reads sharing a connection, and one read transaction, until `end()`. The first read
    /// begins it (DEFERRED, so the snapshot is that read's): a burst of reads pays for one WAL
    /// read lock (two `fcntl` calls) instead of two transactions, the first read's own and the
    /// rest's. A lone read pays for a BEGIN and a COMMIT it did not need: two tiny statements, no lock.
    final class Session: ImmediateReadSession {
        private let reader: SQLitePointReader
        private let connection: Connection
        private var reads = 0
        private var inTransaction = false
        private var ended = false

        fileprivate init(reader: SQLitePointReader, connection: Connection) {
            self.reader = reader
            self.connection = connection
        }

        deinit {
            // A session dropped without end() must not keep its transaction or lose its connection.
            self.end()
        }

        func userWithGroupsEncoded(id: String, groupLimit: Int) throws -> [UInt8]? {
            try self.read { try self.reader.userWithGroups(self.connection, id: id, groupLimit: groupLimit) }
        }

        /// One entity's version (nil if never seen), as `ReplicaStore.version(of:id:)`.
        func version(of kind: EntityKind, id: String) throws -> EntityVersion? {
            try self.read { try self.reader.version(self.connection, kind: kind, id: id) }
        }

        private func read<T>(_ body: () throws -> T) throws -> T {
            guard !self.ended else {
                throw SyncError(.storeUnavailable, "a read session of the SQLite store at '\(self.reader.path)' was used after it ended")
            }
            if self.reads == 0 {
                // DEFERRED: the snapshot is taken by the read below, not before it.
                self.inTransaction = self.connection.run(self.connection.begin)
            }
            self.reads += 1
            do {
                return try body()
            } catch {
                // A failed read leaves the rest of the session to transactions of their own.
                self.finishTransaction()
                throw error
            }
        }

        func end() {
            guard !self.ended else { return }
            self.ended = true
            self.finishTransaction()
            // A connection still inside a transaction (COMMIT and ROLLBACK both failed) would
            // give every later session its old snapshot: it is closed instead of kept.
            guard sqlite3_get_autocommit(self.connection.handle) != 0 else { return }
            self.reader.idle.withLock { $0.append(self.connection) }
        }

        private func finishTransaction() {
            guard self.inTransaction else { return }
            self.inTransaction = false
            // COMMIT of a read transaction only releases its lock; if it fails, the connection
            // must still leave the transaction before anyone else uses it.
            if !self.connection.run(self.connection.commit), sqlite3_get_autocommit(self.connection.handle) == 0 {
                sqlite3_exec(self.connection.handle, "ROLLBACK", nil, nil, nil)
            }
        }
    }

    fileprivate let path: String
    // Connections not in use. A connection is only ever used by the one session that took it out.
    fileprivate let idle = Mutex<[Connection]>([])

    init(path: String) {
        self.path = path
    }

    /// Connections waiting for a session.
    var idleConnections: Int { self.idle.withLock { $0.count } }

    /// A session on a connection of its own: an idle one, or a new one when all are in use.
    func session() throws -> Session {
        let connection = try self.idle.withLock { $0.popLast() } ?? Connection(path: self.path)
        return Session(reader: self, connection: connection)
    }

    /// The live user `id` and its first `groupLimit` live groups as a serialized
    /// `UserWithGroups`, straight from the stored messages; nil if there is no such user.
    fileprivate func userWithGroups(_ connection: Connection, id: String, groupLimit: Int) throws -> [UInt8]? {
        var id = id
        // The id's own bytes are bound (SQLITE_STATIC) and the statement is reset before they
        // go: no copy into SQLite, which was an allocation and a lock of its allocator per call.
        return try id.withUTF8 { idBytes in
            let statement = connection.userWithGroups
            defer { sqlite3_reset(statement) }
            // An empty id still binds text, not NULL; nil as the destructor is SQLITE_STATIC.
            let idPointer = UnsafeRawPointer(idBytes.baseAddress ?? Self.emptyText.utf8Start).assumingMemoryBound(to: CChar.self)
            guard sqlite3_bind_text(statement, 1, idPointer, Int32(idBytes.count), nil) == SQLITE_OK,
                  sqlite3_bind_int64(statement, 2, Int64(groupLimit)) == SQLITE_OK else {
                throw self.failure(connection, "binding the id")
            }
            // Rows go into the reply as they come. Protobuf fields may come in any order, so the
            // reply is right whichever part of the UNION ALL SQLite runs first; the groups keep
            // their id order.
            var reply = UserWithGroupsEncoding()
            var found = false
            while true {
                let step = sqlite3_step(statement)
                if step == SQLITE_DONE { break }
                guard step == SQLITE_ROW else {
                    if step == SQLITE_BUSY {
                        throw SyncError(.storeUnavailable, "the SQLite store at '\(self.path)' is busy (another process is "
                                        + "recovering its log): retry the call")
                    }
                    throw self.failure(connection, "reading user '\(String(decoding: idBytes, as: UTF8.self))'")
                }
                let bytes = UnsafeRawBufferPointer(start: sqlite3_column_blob(statement, 2), count: Int(sqlite3_column_bytes(statement, 2)))
                if sqlite3_column_int(statement, 0) == 0 {
                    guard sqlite3_column_int(statement, 1) == 0 else { return nil }
                    reply.appendUser(bytes)
                    found = true
                } else {
                    reply.appendGroup(bytes)
                }
            }
            // Without a user row (a group names a member not replicated yet) the groups do not matter.
            return found ? reply.bytes : nil
        }
    }

    fileprivate func version(_ connection: Connection, kind: EntityKind, id: String) throws -> EntityVersion? {
        var id = id
        return try id.withUTF8 { idBytes in
            try kind.rawValue.utf8CString.withUnsafeBufferPointer { kindText in
                let statement = connection.version
                defer { sqlite3_reset(statement) }
                let idPointer = UnsafeRawPointer(idBytes.baseAddress ?? Self.emptyText.utf8Start).assumingMemoryBound(to: CChar.self)
                guard let kindPointer = kindText.baseAddress,
                      sqlite3_bind_text(statement, 1, kindPointer, -1, nil) == SQLITE_OK,
                      sqlite3_bind_text(statement, 2, idPointer, Int32(idBytes.count), nil) == SQLITE_OK else {
                    throw self.failure(connection, "binding the id")
                }
                switch sqlite3_step(statement) {
                case SQLITE_DONE:
                    return nil
                case SQLITE_ROW:
                    let version = sqlite3_column_int64(statement, 0)
                    // A damaged file must fail the read, not trap the process.
                    guard let stored = UInt64(exactly: version) else {
                        throw SyncError(.storeUnavailable, "\(kind.rawValue) '\(String(decoding: idBytes, as: UTF8.self))' has a "
                                        + "negative version (\(version)) in the SQLite store at '\(self.path)'")
                    }
                    return EntityVersion(version: stored, deleted: sqlite3_column_int(statement, 1) != 0)
                case SQLITE_BUSY:
                    throw SyncError(.storeUnavailable, "the SQLite store at '\(self.path)' is busy (another process is "
                                    + "recovering its log): retry the call")
                default:
                    throw self.failure(connection, "reading the version of \(kind.rawValue) '\(String(decoding: idBytes, as: UTF8.self))'")
                }
            }
        }
    }

    private static let emptyText: StaticString = ""

    private func failure(_ connection: Connection, _ doing: String) -> SyncError {
        SyncError(.storeUnavailable, "the SQLite store at '\(self.path)' failed \(doing): \(String(cString: sqlite3_errmsg(connection.handle)))")
    }
}
