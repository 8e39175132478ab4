import EntitySyncCore
@testable import EntitySyncSQLite
import EntitySyncTestSupport
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

    /// Every commit is on disk before it is acked or replied to: `synchronous = FULL` (2) on the
    /// writer and on the readers of both stores.
    @Test func everyConnectionSyncsEachCommit() async throws {
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("durable-replica"))
        let replicaSettings = try await replica.database.synchronousSettings()
        #expect(replicaSettings.writer == 2 && replicaSettings.reader == 2)
        let source = try SQLiteSourceStore(path: Fixtures.temporaryDatabasePath("durable-source"), producer: "p")
        let sourceSettings = try await source.database.synchronousSettings()
        #expect(sourceSettings.writer == 2 && sourceSettings.reader == 2)
    }
}
