import EntitySyncCore
import Foundation
import EntitySyncProto
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

    /// Two instances of a group write one file: one that finds the write lock taken waits for it
    /// (in short sleeps, not SQLite's growing ones) and then writes, rather than failing.
    @Test func aSecondInstanceWaitsForTheWriteLockAndThenWrites() async throws {
        let path = Fixtures.temporaryDatabasePath("two-writers")
        let first = try SQLiteReplicaStore(path: path)
        let second = try SQLiteReplicaStore(path: path)
        let release = Release()
        // Whatever happens below, the first store's writer thread is let go.
        defer { release.open() }
        let (locked, lockedContinuation) = AsyncStream<Void>.makeStream()
        let holder = Task {
            defer { lockedContinuation.finish() }
            try await first.database.write { db in
                // A write (even of no rows) takes the file's write lock until the commit.
                try db.execute(sql: "UPDATE entities SET version = version")
                lockedContinuation.yield()
                release.wait()
            }
        }
        var tookLock = false
        for await _ in locked { tookLock = true; break }
        guard tookLock else {
            try await holder.value
            Issue.record("the first store never took the write lock")
            return
        }
        let writer = Task { try await second.apply(batch: [try validated(Fixtures.userChange("u2", version: 1)),
                                                           try validated(Fixtures.userChange("u3", version: 1))]) }
        // The second writer must have met the lock before it is released.
        let deadline = ContinuousClock.now + .seconds(5)
        while second.database.lockWait.waits.load(ordering: .relaxed) == 0, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(1))
        }
        #expect(second.database.lockWait.waits.load(ordering: .relaxed) > 0, "the second writer never waited for the lock")
        release.open()
        try await holder.value
        #expect(try await writer.value == [.apply, .apply])
        for id in ["u2", "u3"] { #expect(try await first.user(id: id)?.id == id) }
    }

    /// Holds a write transaction open on the writer's thread until opened.
    private final class Release: Sendable {
        private let semaphore = DispatchSemaphore(value: 0)
        func wait() { self.semaphore.wait() }
        func open() { self.semaphore.signal() }
    }

    /// The point read the gRPC server makes on its event loop answers what the async read does,
    /// as a serialized UserWithGroups: groups in id order up to the limit, deleted groups left
    /// out, a deleted or unknown user not found (also when a group already names it).
    @Test func theEventLoopPointReadAgreesWithTheAsyncRead() async throws {
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("point-read"))
        for change in [Fixtures.userChange("u1", version: 1), Fixtures.userChange("u2", version: 1),
                       Fixtures.groupChange("g3", version: 1, members: ["u1", "u9"]), Fixtures.groupChange("g1", version: 1, members: ["u1"]),
                       Fixtures.groupChange("g2", version: 1, members: ["u1", "u2"]), Fixtures.deletion(.group, "g2", version: 2),
                       Fixtures.deletion(.user, "u2", version: 2)] {
            _ = try await replica.apply(validated(change))
        }
        for limit in [1, 2, 1000] {
            let encoded = try #require(try replica.userWithGroupsEncoded(id: "u1", groupLimit: limit))
            let decoded = try Entitysync_V1_UserWithGroups(serializedBytes: encoded)
            let expected = try #require(try await replica.userWithGroups(id: "u1", groupLimit: limit))
            #expect(decoded.user == expected.user)
            #expect(decoded.groups == expected.groups)
            #expect(decoded.groups.map(\.id) == Array(["g1", "g3"].prefix(limit)))
        }
        #expect(try replica.userWithGroupsEncoded(id: "u2", groupLimit: 10) == nil, "a deleted user")
        #expect(try replica.userWithGroupsEncoded(id: "u9", groupLimit: 10) == nil, "named by a group, not replicated yet")
        #expect(try replica.userWithGroupsEncoded(id: "nobody", groupLimit: 10) == nil)
        #expect(try replica.userWithGroupsEncoded(id: "", groupLimit: 10) == nil, "an empty id is text like any other")
        // The id's bytes are bound without a copy: a long (heap) id reads right, and a
        // non-ASCII one (never valid, but asked for) finds nothing.
        #expect(try replica.userWithGroupsEncoded(id: "ünïcödé", groupLimit: 10) == nil)
        let longID = "user.with-an_id:longer@than-a-small-string"
        _ = try await replica.apply(validated(Fixtures.userChange(longID, version: 1)))
        let long = try Entitysync_V1_UserWithGroups(serializedBytes: try #require(try replica.userWithGroupsEncoded(id: longID, groupLimit: 10)))
        #expect(long.user.id == longID)
        #expect(try replica.userWithGroupsEncoded(id: String(longID.dropLast()), groupLimit: 10) == nil, "a prefix of an id is not the id")
        // A later change is seen by the next point read (the read connections hold no snapshot).
        _ = try await replica.apply(validated(Fixtures.userChange("u1", version: 5, name: "Grace")))
        let after = try Entitysync_V1_UserWithGroups(serializedBytes: try #require(try replica.userWithGroupsEncoded(id: "u1", groupLimit: 10)))
        #expect(after.user.name == "Grace" && after.user.version == 5)
    }

    /// SQLite's memory statistics can only be turned off before SQLite starts (the command does
    /// it first thing); asked later, the call says it came too late and changes nothing.
    @Test func memoryStatisticsCannotBeTurnedOffOnceSQLiteRuns() async throws {
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("memory-statistics"))
        _ = try await replica.apply(validated(Fixtures.userChange("u1", version: 1)))
        #expect(SQLiteProcess.disableMemoryStatistics() == false)
        #expect(try replica.userWithGroupsEncoded(id: "u1", groupLimit: 1) != nil)
    }

    /// Reads in one session see one snapshot, the first read's: a commit made meanwhile (the
    /// writer is not held up by it) shows only after `end()`, and only one connection is used
    /// however many sessions follow one another.
    @Test func aReadSessionSharesOneSnapshotUntilItEnds() async throws {
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("read-session"))
        _ = try await replica.apply(validated(Fixtures.userChange("u1", version: 1, name: "Ada")))
        func name(_ session: any ImmediateReadSession) throws -> String {
            let bytes = try #require(try session.userWithGroupsEncoded(id: "u1", groupLimit: 10))
            return try Entitysync_V1_UserWithGroups(serializedBytes: bytes).user.name
        }
        let session = try replica.readSession()
        #expect(try name(session) == "Ada")
        // The first read took the snapshot: commits after it are not seen until the session ends.
        _ = try await replica.apply(validated(Fixtures.userChange("u1", version: 2, name: "Grace")))
        #expect(try name(session) == "Ada", "the second read shares the first's snapshot")
        _ = try await replica.apply(validated(Fixtures.userChange("u1", version: 3, name: "Edsger")))
        #expect(try name(session) == "Ada")
        #expect(try session.userWithGroupsEncoded(id: "nobody", groupLimit: 10) == nil)
        #expect(try name(session) == "Ada")
        session.end()
        #expect(throws: SyncError.self) { _ = try session.userWithGroupsEncoded(id: "u1", groupLimit: 10) }
        let next = try replica.readSession()
        #expect(try name(next) == "Edsger")
        #expect(try name(next) == "Edsger")
        next.end()
        #expect(replica.pointReader.idleConnections == 1, "sessions one after another reuse one connection")
    }

    /// A session that ends after one read, or is dropped without `end()` after two, gives its
    /// connection back and holds no transaction: the writer can still checkpoint the whole log.
    @Test func anEndedOrDroppedSessionGivesItsConnectionBack() async throws {
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("read-session-dropped"))
        _ = try await replica.apply(validated(Fixtures.userChange("u1", version: 1)))
        let single = try replica.readSession()
        _ = try single.userWithGroupsEncoded(id: "u1", groupLimit: 10)
        single.end()
        #expect(replica.pointReader.idleConnections == 1)
        do {
            let dropped = try replica.readSession()
            #expect(replica.pointReader.idleConnections == 0)
            _ = try dropped.userWithGroupsEncoded(id: "u1", groupLimit: 10)
            _ = try dropped.userWithGroupsEncoded(id: "u1", groupLimit: 10)
        }
        #expect(replica.pointReader.idleConnections == 1, "a dropped session's connection is back in the pool")
        _ = try await replica.apply(validated(Fixtures.userChange("u1", version: 2)))
        let checkpoint = try replica.database.checkpointTruncate()
        #expect(!checkpoint.busy && checkpoint.logFrames == 0, "a TRUNCATE checkpoint empties the log when no reader holds a snapshot")
        let after = try replica.readSession()
        let user = try Entitysync_V1_UserWithGroups(serializedBytes: try #require(try after.userWithGroupsEncoded(id: "u1", groupLimit: 10))).user
        #expect(user.version == 2, "the pooled connection reads the latest commit")
        after.end()
    }
}
