import EntitySyncCore
import EntitySyncSQLite
import Testing

/// What only the SQLite backend has: a file on this host.
@Suite struct SQLiteStoreTests {
    @Test func unusablePathIsAClearError() {
        do {
            _ = try SQLiteSourceStore(path: "/proc/entitysync/nope.sqlite", producer: "p")
            Issue.record("opened a store under /proc")
        } catch let error as SyncError {
            #expect(error.code == .configuration)
            #expect(error.message.contains("/proc/entitysync/nope.sqlite"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}
