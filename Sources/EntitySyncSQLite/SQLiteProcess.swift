import CSQLiteTuning
import GRDBSQLite

/// Settings SQLite takes once per process, before its first connection is opened.
public enum SQLiteProcess {
    /// Turns off SQLite's memory statistics, whose mutex every SQLite allocation of every
    /// connection takes (about 3% of a GetUser answered on the event loop); nothing of ours reads
    /// them. Call it first thing in `main`: true if it took effect, false once SQLite has started.
    @discardableResult
    public static func disableMemoryStatistics() -> Bool {
        entitysync_sqlite_disable_memory_statistics() == SQLITE_OK
    }
}
