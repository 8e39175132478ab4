import EntitySyncCore
@testable import EntitySyncPostgres
import EntitySyncTestSupport
import Foundation
import Testing

/// What only the PostgreSQL backend has: logins, a server that can be down, schemas migrated by
/// many instances at once.
@Suite(.enabled(if: StoreBackend.postgresURL != nil, "needs ENTITY_SYNC_TEST_POSTGRES_URL (scripts/test starts one)"))
struct PostgresStoreTests {
    @Test func aWrongPasswordIsAConfigurationErrorThatHidesIt() async throws {
        var url = try PostgresURL(try #require(StoreBackend.postgresURL))
        url.password = "not-the-password-\(UUID().uuidString.prefix(6))"
        do {
            _ = try await PostgresReplicaStore(url: url, group: "wrong-password")
            Issue.record("logged in with a wrong password")
        } catch let error as SyncError {
            #expect(error.code == .configuration, "\(error)")
            #expect(error.message.contains("password"), "\(error)")
            #expect(!error.message.contains(url.password ?? "?"), "\(error)")
        }
    }

    @Test func aServerThatIsNotThereIsUnavailableNotAHang() async throws {
        var url = try PostgresURL(try #require(StoreBackend.postgresURL))
        url.port = try freePort()
        let started = ContinuousClock.now
        do {
            _ = try await PostgresSourceStore(url: url, producer: "p")
            Issue.record("opened a store with no server")
        } catch let error as SyncError {
            #expect(error.code == .storeUnavailable, "\(error)")
            #expect(error.message.contains("127.0.0.1:\(url.port)"), "\(error)")
            #expect(!error.message.contains(url.password ?? "?"), "\(error)")
        }
        #expect(ContinuousClock.now - started < .seconds(30))
    }

    /// Ten instances of a group starting at once on an empty schema: one migrates, all open.
    @Test func tenInstancesMigratingAtOnceAllOpenOneSchema() async throws {
        let place = try StoreBackend.postgres.place("migrate")
        let stores = try await withThrowingTaskGroup(of: (any ReplicaStore).self) { group in
            for _ in 0..<10 { group.addTask { try await place.replica() } }
            return try await group.reduce(into: [any ReplicaStore]()) { $0.append($1) }
        }
        #expect(stores.count == 10)
        #expect(try await stores[0].apply(try ChangeCodec.validate(Fixtures.userChange(version: 1), expected: nil).get()) == .apply)
        #expect(try await stores[9].user(id: "u1")?.version == 1)
    }

    @Test func aSchemaFromANewerBuildIsRefused() async throws {
        let place = try StoreBackend.postgres.place("newer")
        _ = try await place.replica()
        let url = try PostgresURL(place.location)
        try await PostgresAdmin.execute(url, "INSERT INTO schema_migrations (version) VALUES (99)")
        do {
            _ = try await place.replica()
            Issue.record("opened a schema migrated by a newer build")
        } catch let error as SyncError {
            #expect(error.code == .configuration && error.message.contains("newer"), "\(error)")
        }
    }

    /// Groups share one database in schemas of their own; neither sees the other's entities.
    @Test func groupsOnOneDatabaseKeepApart() async throws {
        var url = try PostgresURL(try #require(StoreBackend.postgresURL))
        let suffix = UUID().uuidString.prefix(6).lowercased()
        url.schema = nil
        let first = try await PostgresReplicaStore(url: url, group: "apart-a-\(suffix)")
        let second = try await PostgresReplicaStore(url: url, group: "apart-b-\(suffix)")
        #expect(try await first.apply(try ChangeCodec.validate(Fixtures.userChange(version: 1), expected: nil).get()) == .apply)
        #expect(try await second.user(id: "u1") == nil)
        #expect(PostgresReplicaStore.defaultSchema(group: "consumer_user-rpc") == "entitysync_consumer_user_rpc")
    }

    /// One schema named for two stores (a shared `?schema=`): the second is refused, instead of
    /// writing into tables that are not its own.
    @Test func twoStoresInOneSchemaAreRefused() async throws {
        let place = try StoreBackend.postgres.place("shared")
        _ = try await place.source()
        for attempt in [{ try await place.replica(group: "consumer_user_rpc") }, { try await place.replica(group: "other") }] {
            do {
                _ = try await attempt()
                Issue.record("a replica opened in the producer's schema")
            } catch let error as SyncError {
                #expect(error.code == .configuration && error.message.contains("holds the source store"), "\(error)")
            }
        }
        let groupPlace = try StoreBackend.postgres.place("group")
        _ = try await groupPlace.replica(group: "consumer_user_rpc")
        await #expect(throws: SyncError.self) { _ = try await groupPlace.replica(group: "consumer_org_rpc") }
    }

    /// A schema that is not this build's (a column missing) fails every apply the same way: it
    /// is reported as rejected, not as an outage to wait out.
    @Test func aStatementTheServerRefusesIsRejectedNotUnavailable() async throws {
        let place = try StoreBackend.postgres.place("broken")
        let store = try await place.replica()
        try await PostgresAdmin.execute(try PostgresURL(place.location), "ALTER TABLE sync_statistics DROP COLUMN stale")
        do {
            _ = try await store.apply(try ChangeCodec.validate(Fixtures.userChange(version: 1), expected: nil).get())
            Issue.record("an apply counted into a missing column")
        } catch let error as SyncError {
            #expect(error.code == .storeRejected, "\(error)")
            #expect(error.message.contains("42703"), "\(error)")
        }
        try await store.checkReachable()
    }

    /// Every commit is flushed before it is acked or replied to, even on a server whose default
    /// is `synchronous_commit = off`: each pooled connection sets it on.
    @Test func everyConnectionWaitsForItsCommitToBeFlushed() async throws {
        let url = try PostgresURL(try #require(StoreBackend.postgresURL))
        try await PostgresAdmin.execute(url, "ALTER DATABASE \"\(url.database)\" SET synchronous_commit = off")
        do {
            let replica = try await PostgresReplicaStore(url: try PostgresURL(try StoreBackend.postgres.place("durable").location),
                                                         group: "durable")
            defer { replica.close() }
            // Several at once, so that the pool opens several connections.
            let settings = try await withThrowingTaskGroup(of: String.self) { group in
                for _ in 0..<6 {
                    group.addTask {
                        try await replica.database.read("read synchronous_commit") { sql in
                            let rows = try await sql.rows("SELECT current_setting('synchronous_commit'), pg_sleep(0.05)::text")
                            return try rows.first.map { try $0.decode((String, String).self).0 } ?? "missing"
                        }
                    }
                }
                return try await group.reduce(into: [String]()) { $0.append($1) }
            }
            #expect(settings == Array(repeating: "on", count: 6))
            // The server default really is off: the stores' setting is what turns it on.
            #expect(try await PostgresAdmin.execute(url, "SHOW synchronous_commit").trimmingCharacters(in: .whitespacesAndNewlines) == "off")
        } catch {
            try await PostgresAdmin.execute(url, "ALTER DATABASE \"\(url.database)\" RESET synchronous_commit")
            throw error
        }
        try await PostgresAdmin.execute(url, "ALTER DATABASE \"\(url.database)\" RESET synchronous_commit")
    }
}
