import EntitySyncCore
import EntitySyncPostgres
import EntitySyncProto
import EntitySyncTestSupport
import Foundation
import SwiftProtobuf
import Synchronization
import Testing

func validated(_ change: EntityChange) throws -> ValidatedChange {
    try ChangeCodec.validate(change, expected: nil).get()
}

/// The replica store contract, run against every backend.
@Suite struct ReplicaStoreTests {
    @Test(arguments: StoreBackend.available) func appliesOnlyNewerVersions(backend: StoreBackend) async throws {
        let replica = try await backend.place("replica").replica()
        #expect(try await replica.apply(validated(Fixtures.userChange(version: 2))) == .apply)
        #expect(try await replica.apply(validated(Fixtures.userChange(version: 2))) == .stale)
        #expect(try await replica.apply(validated(Fixtures.userChange(version: 1))) == .stale)
        var delete = Fixtures.userChange(version: 3)
        delete.operation = .delete
        delete.state = nil
        #expect(try await replica.apply(validated(delete)) == .apply)
        #expect(try await replica.user(id: "u1") == nil)
        // An older upsert arriving after the delete must not resurrect the user.
        #expect(try await replica.apply(validated(Fixtures.userChange(version: 2))) == .stale)
        #expect(try await replica.versions(of: .user)["u1"] == EntityVersion(version: 3, deleted: true))
        let statistics = try await replica.statistics()[.user]
        #expect(statistics?.applied == 2)
        #expect(statistics?.stale == 3)
        #expect(statistics?.entities == 0)
        #expect(statistics?.highestVersion == 3)
        #expect(statistics?.lastAppliedAt != nil)
    }

    /// Versions read together come back in the order asked, repeats and unknown ids included, and
    /// agree with one read each; a kind does not see another kind's entity of the same id.
    @Test(arguments: StoreBackend.available) func versionsReadTogetherMatchOneReadEach(backend: StoreBackend) async throws {
        let replica = try await backend.place("versions").replica()
        _ = try await replica.apply(validated(Fixtures.userChange("u1", version: 2)))
        _ = try await replica.apply(validated(Fixtures.userChange("u2", version: 1)))
        var delete = Fixtures.userChange("u2", version: 3)
        delete.operation = .delete
        delete.state = nil
        _ = try await replica.apply(validated(delete))
        _ = try await replica.apply(validated(Fixtures.groupChange("g1", version: 4, members: ["u1"])))
        let asked: [(kind: EntityKind, id: String)] = [(.user, "u1"), (.user, "nobody"), (.group, "g1"), (.user, "u2"),
                                                        (.user, "u1"), (.group, "u1"), (.user, "")]
        let together = try await replica.versions(of: asked)
        var oneEach: [EntityVersion?] = []
        for entity in asked { oneEach.append(try await replica.version(of: entity.kind, id: entity.id)) }
        #expect(together == oneEach)
        #expect(together == [EntityVersion(version: 2, deleted: false), nil, EntityVersion(version: 4, deleted: false),
                             EntityVersion(version: 3, deleted: true), EntityVersion(version: 2, deleted: false), nil, nil])
        #expect(try await replica.versions(of: []).isEmpty)
    }

    /// A batch is applied in order under the version rule: several versions of one entity end at
    /// the newest, an older one after it is stale, and a group's members follow its last version.
    @Test(arguments: StoreBackend.available) func aBatchAppliesInOrderUnderTheVersionRule(backend: StoreBackend) async throws {
        let replica = try await backend.place("batch").replica()
        #expect(try await replica.apply(validated(Fixtures.userChange("u0", version: 5))) == .apply)
        let changes = try [
            Fixtures.userChange("u1", version: 1),
            Fixtures.userChange("u2", version: 1),
            Fixtures.userChange("u1", version: 3),
            Fixtures.userChange("u1", version: 2),
            Fixtures.userChange("u0", version: 4),
            Fixtures.groupChange("g1", version: 1, members: ["u1", "u2"]),
            Fixtures.groupChange("g1", version: 2, members: ["u2"]),
            Fixtures.deletion(.user, "u2", version: 2),
        ].map(validated)
        let decisions = try await replica.apply(batch: changes)
        #expect(decisions == [.apply, .apply, .apply, .stale, .stale, .apply, .apply, .apply])
        #expect(try await replica.user(id: "u1")?.version == 3)
        #expect(try await replica.user(id: "u2") == nil)
        #expect(try await replica.members(ofGroup: "g1", after: nil, limit: 10).isEmpty)
        #expect(try await replica.group(id: "g1")?.memberIds == ["u2"])
        #expect(try await replica.apply(batch: []) == [])
        let statistics = try await replica.statistics()
        #expect(statistics[.user]?.applied == 5 && statistics[.user]?.stale == 2)
        #expect(statistics[.group]?.applied == 2 && statistics[.group]?.stale == 0)
    }

    /// A read-your-writes wait on one instance wakes, long before its timeout, for a change
    /// another instance committed to the shared store (SQLite: another connection to the file,
    /// seen through `PRAGMA data_version`; PostgreSQL: NOTIFY after the commit, LISTEN here),
    /// whether the change came alone or in a batch.
    @Test(arguments: StoreBackend.available) func aWaitWakesForAnotherInstancesCommit(backend: StoreBackend) async throws {
        let place = try backend.place("watch")
        let waiting = try await place.replica(group: "watch")
        let applying = try await place.replica(group: "watch")
        try await Self.expectWake(of: waiting, seeing: .user, "u1") {
            _ = try await applying.apply(validated(Fixtures.userChange("u1", version: 1)))
        }
        try await Self.expectWake(of: waiting, seeing: .group, "g1") {
            _ = try await applying.apply(batch: [validated(Fixtures.userChange("u2", version: 1)),
                                                 validated(Fixtures.groupChange("g1", version: 1, members: ["u1"]))])
        }
    }

    /// Starts a waiter on `store` that loops on two-minute waits until `id` is there, commits
    /// through `commit`, and expects the waiter to see it within 30 s.
    private static func expectWake(of store: any ReplicaStore, seeing kind: EntityKind, _ id: String,
                                   after commit: () async throws -> Void) async throws {
        final class Seen: Sendable { let value = Mutex(false) }
        let seen = Seen()
        let waiter = Task {
            while try await store.version(of: kind, id: id) == nil {
                await store.waitForCommit(timeout: .seconds(120))
            }
            seen.value.withLock { $0 = true }
        }
        defer { waiter.cancel() }
        // Not synchronisation: it only lets the waiter start watching and get past its first
        // wake, so that the commit lands while it waits.
        try await Task.sleep(for: .milliseconds(500))
        try await commit()
        try await eventually("the waiting instance saw \(kind.rawValue) \(id)", timeout: .seconds(30)) { seen.value.withLock { $0 } }
    }

    /// A store that can be read but not written is down for a consumer: the write probe fails
    /// while another connection holds the write lock past the store's wait (as a full disk or a
    /// read-only database would fail it), passes once the lock is released, and leaves nothing
    /// in the statistics.
    @Test(arguments: StoreBackend.available) func theWriteProbeFailsWhileWritesCannotCommit(backend: StoreBackend) async throws {
        let place = try backend.place("probe")
        let store = try await place.replica()
        _ = try await store.apply(try validated(Fixtures.userChange("ada", version: 1)))
        try await store.checkReachable()
        let directory = try Fixtures.temporaryDirectory("probe")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = directory + "/lock-holder.log"
        let statistics = try await store.statistics()
        // The lock is held until the test lets it go, however slow the machine: the probe must
        // meet it whenever it starts.
        let holder: ChildProcess
        let release: () async throws -> Void
        switch backend {
        case .sqlite:
            let held = directory + "/held", released = directory + "/released"
            holder = try ChildProcess("/usr/bin/env", ["python3", "-c", """
                import os, sqlite3, sys, time
                connection = sqlite3.connect(sys.argv[1], isolation_level=None)
                connection.execute("BEGIN IMMEDIATE")
                open(sys.argv[2], "w").close()
                deadline = time.monotonic() + 300
                while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
                    time.sleep(0.05)
                connection.execute("COMMIT")
                """, place.location, held, released], log: log)
            try await eventually("the other connection holds the write lock") { FileManager.default.fileExists(atPath: held) }
            release = { _ = FileManager.default.createFile(atPath: released, contents: nil) }
        case .postgres:
            let url = try PostgresURL(place.location)
            // Each table an apply writes, in turn: a probe that only wrote its own row would pass.
            let tag = "probe-lock-\(UUID().uuidString.prefix(8))"
            holder = try PostgresAdmin.start(url, "BEGIN; LOCK TABLE entities IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(300) /* \(tag) */;",
                                             log: log)
            try await eventually("the other session holds the table lock") {
                let held = try? await PostgresAdmin.execute(url, """
                    SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                    WHERE c.relname = 'entities' AND c.relnamespace = to_regnamespace(current_schema())
                      AND l.mode = 'AccessExclusiveLock' AND l.granted
                    """)
                return held?.trimmingCharacters(in: .whitespacesAndNewlines) == "1"
            }
            release = {
                try await PostgresAdmin.execute(url, """
                    SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%\(tag)%' AND pid <> pg_backend_pid()
                    """)
            }
        }
        await #expect(throws: SyncError.self) { try await store.checkReachable() }
        try await release()
        try await holder.waitForExit("the lock holder", timeout: .seconds(60))
        try await store.checkReachable()
        // Reads never stopped, and the probe's row is no entity kind's.
        #expect(try await store.version(of: .user, id: "ada")?.version == 1)
        #expect(try await store.statistics() == statistics)
    }

    /// A group's members follow its newest version: replaced by an upsert, cleared by its
    /// deletion, and not brought back by an older upsert arriving late.
    @Test(arguments: StoreBackend.available) func groupMembersFollowTheNewestVersion(backend: StoreBackend) async throws {
        let replica = try await backend.place("members").replica()
        for user in ["u1", "u2", "u3"] { _ = try await replica.apply(validated(Fixtures.userChange(user, version: 1))) }
        #expect(try await replica.apply(validated(Fixtures.groupChange("g1", version: 1, members: ["u1", "u2"]))) == .apply)
        #expect(try await replica.apply(validated(Fixtures.groupChange("g1", version: 2, members: ["u2", "u3"]))) == .apply)
        #expect(try await replica.members(ofGroup: "g1", after: nil, limit: 10).map(\.id) == ["u2", "u3"])
        #expect(try await replica.groups(ofUser: "u1", after: nil, limit: 10).isEmpty)
        #expect(try await replica.apply(validated(Fixtures.deletion(.group, "g1", version: 3))) == .apply)
        #expect(try await replica.members(ofGroup: "g1", after: nil, limit: 10).isEmpty)
        #expect(try await replica.groups(ofUser: "u2", after: nil, limit: 10).isEmpty)
        #expect(try await replica.apply(validated(Fixtures.groupChange("g1", version: 2, members: ["u1"]))) == .stale)
        #expect(try await replica.group(id: "g1") == nil)
        #expect(try await replica.groups(ofUser: "u1", after: nil, limit: 10).isEmpty)
        let statistics = try await replica.statistics()[.group]
        #expect(statistics?.applied == 3 && statistics?.stale == 1)
    }

    /// Instances of a group starting together on a new store race to create the schema; every
    /// one of them must open it.
    @Test(arguments: StoreBackend.available) func instancesOpeningAFreshFileTogetherAllSucceed(backend: StoreBackend) async throws {
        for _ in 0..<10 {
            let place = try backend.place("race")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 { group.addTask { _ = try await place.replica() } }
                try await group.waitForAll()
            }
        }
    }

    @Test(arguments: StoreBackend.available) func twoInstancesOnOneFileConverge(backend: StoreBackend) async throws {
        let place = try backend.place("shared")
        let first = try await place.replica()
        let second = try await place.replica()
        // Versions 1...50 of 20 users, split between the instances in scrambled order.
        var changes: [ValidatedChange] = []
        for user in 0..<20 {
            for version in 1...5 { changes.append(try validated(Fixtures.userChange("u\(user)", version: UInt64(version)))) }
        }
        changes.shuffle()
        let halves = [Array(changes.prefix(50)), Array(changes.suffix(50))]
        await withTaskGroup(of: Void.self) { group in
            for (store, half) in zip([first, second], halves) {
                group.addTask {
                    for change in half { _ = try? await store.apply(change) }
                }
            }
        }
        let versions = try await first.versions(of: .user)
        #expect(versions.count == 20)
        #expect(versions.values.allSatisfy { $0.version == 5 && !$0.deleted })
        let statistics = try await second.statistics()[.user]
        #expect((statistics?.applied ?? 0) + (statistics?.stale ?? 0) == 100)
    }
}
