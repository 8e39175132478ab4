import EntitySyncCore
@testable import EntitySyncSQLite
import EntitySyncTestSupport
import Synchronization
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

    /// A read-your-writes wait on one instance wakes for a change another instance (another
    /// connection, as another process would be) committed to the shared file, long before its
    /// timeout.
    @Test func aWaitWakesForAnotherInstancesCommit() async throws {
        let path = Fixtures.temporaryDatabasePath("watch")
        let waiting = try SQLiteReplicaStore(path: path)
        let applying = try SQLiteReplicaStore(path: path)
        final class Seen: Sendable { let value = Mutex(false) }
        let seen = Seen()
        let waiter = Task {
            while try await waiting.version(of: .user, id: "u1") == nil {
                await waiting.waitForCommit(timeout: .seconds(120))
            }
            seen.value.withLock { $0 = true }
        }
        // Not synchronisation: it only lets the waiter get past its first (primed) wake, so that
        // the commit lands while it waits on the file.
        try await Task.sleep(for: .milliseconds(200))
        _ = try await applying.apply(validated(Fixtures.userChange("u1", version: 1)))
        try await eventually("the waiting instance saw the change", timeout: .seconds(30)) { seen.value.withLock { $0 } }
        waiter.cancel()
    }
}
