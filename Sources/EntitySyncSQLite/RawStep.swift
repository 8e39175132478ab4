import GRDB
import GRDBSQLite

/// One step of a GRDB cached statement through SQLite's C API, for the writes and point reads
/// a mutation or an event makes: GRDB's `StatementArguments` (an array of existentials bound
/// through nested closures) and `Row` were a tenth of a write's CPU. What GRDB's `execute` adds
/// that matters here is kept: writes outside a transaction SQLite aborted are refused, and a
/// failure is a `DatabaseError` with SQLite's message.
enum RawStep {
    /// The binds of one step; after the first failure the rest do nothing and `code` keeps it.
    /// Buffers are bound without a copy (SQLITE_STATIC): they must outlive the step.
    struct Bindings {
        fileprivate let statement: OpaquePointer
        fileprivate(set) var code = SQLITE_OK

        /// Text with an explicit length: text holding a NUL is stored whole, not cut at it.
        mutating func text(_ index: Int32, _ text: UnsafePointer<CChar>, count: Int) {
            guard self.code == SQLITE_OK else { return }
            self.code = sqlite3_bind_text(self.statement, index, text, Int32(clamping: count), nil)
        }

        mutating func int64(_ index: Int32, _ value: Int64) {
            guard self.code == SQLITE_OK else { return }
            self.code = sqlite3_bind_int64(self.statement, index, value)
        }

        mutating func double(_ index: Int32, _ value: Double) {
            guard self.code == SQLITE_OK else { return }
            self.code = sqlite3_bind_double(self.statement, index, value)
        }

        /// An empty blob is a zero-length blob, not NULL.
        mutating func blob(_ index: Int32, _ bytes: UnsafeRawBufferPointer) {
            guard self.code == SQLITE_OK else { return }
            self.code = bytes.isEmpty ? sqlite3_bind_zeroblob(self.statement, index, 0)
                : sqlite3_bind_blob(self.statement, index, bytes.baseAddress, Int32(clamping: bytes.count), nil)
        }
    }

    /// Resets `statement`, binds with `bind`, steps once and passes the step's code (or the
    /// first failed bind's) with the raw statement to `result`, which may read columns. The
    /// statement is reset and its bindings cleared before this returns.
    static func run<T>(_ statement: Statement, bind: (inout Bindings) -> Void,
                       _ result: (Int32, OpaquePointer) throws -> T) rethrows -> T {
        // GRDB's statement cache keeps the statement alive too; this says so where its pointer is used.
        return try withExtendedLifetime(statement) {
            let raw = statement.sqliteStatement
            defer {
                sqlite3_reset(raw)
                sqlite3_clear_bindings(raw)
            }
            var bindings = Bindings(statement: raw, code: sqlite3_reset(raw))
            bind(&bindings)
            return try result(bindings.code == SQLITE_OK ? sqlite3_step(raw) : bindings.code, raw)
        }
    }

    /// Throws unless `db` is inside a transaction: outside one (SQLite rolled it back after an
    /// I/O or disk-full error) a write would commit on its own, apart from the rest of its change.
    static func requireTransaction(_ db: Database, sql: String) throws {
        guard sqlite3_get_autocommit(db.sqliteConnection) == 0 else {
            throw DatabaseError(resultCode: .SQLITE_ABORT, message: "Transaction was aborted", sql: sql)
        }
    }

    /// The error for a step or bind that answered `code`.
    static func failure(_ code: Int32, _ db: Database, sql: String) -> DatabaseError {
        DatabaseError(resultCode: ResultCode(rawValue: code),
                      message: db.sqliteConnection.map { String(cString: sqlite3_errmsg($0)) }, sql: sql)
    }
}
