import EntitySyncCore
import EntitySyncProto
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import SwiftProtobuf
import Testing

func outboxEvents(_ store: SQLiteSourceStore) async throws -> [EntityChange] {
    try await store.claimOutbox(owner: "inspector", lease: .seconds(1), limit: 1000).map { try EntityChange(serializedBytes: $0.payload) }
}

@Suite struct SQLiteSourceStoreTests {
    @Test func versionsTombstonesAndOutboxInOneTransaction() async throws {
        let store = try SQLiteSourceStore(path: Fixtures.temporaryDatabasePath("source"), producer: "p1")
        let created = try await store.createUser(UserDraft(id: "u1", name: "Ada", email: "ada@example.com"))
        #expect(created.version == 1)
        let updated = try await store.updateUser(UserDraft(id: "u1", name: "Ada L.", email: "ada@example.com"), expectedVersion: 1)
        #expect(updated.version == 2)
        #expect(try await store.user(id: "u1")?.name == "Ada L.")

        do {
            _ = try await store.updateUser(UserDraft(id: "u1", name: "X", email: "x@example.com"), expectedVersion: 1)
            Issue.record("a stale expected version was accepted")
        } catch let error as SyncError {
            #expect(error.code == .versionMismatch)
            #expect(error.message.contains("version 2"))
        }
        do {
            _ = try await store.createUser(UserDraft(id: "u1", name: "Again", email: "a@example.com"))
            Issue.record("a duplicate create was accepted")
        } catch let error as SyncError {
            #expect(error.code == .alreadyExists)
        }

        #expect(try await store.deleteUser(id: "u1", expectedVersion: nil) == 3)
        #expect(try await store.user(id: "u1") == nil)
        #expect(try await store.versions(of: .user)["u1"] == EntityVersion(version: 3, deleted: true))
        // Re-creating continues the version sequence, so replicas never see it go backwards.
        #expect(try await store.createUser(UserDraft(id: "u1", name: "Ada", email: "ada@example.com")).version == 4)

        let events = try await outboxEvents(store)
        #expect(events.map(\.version) == [1, 2, 3, 4])
        #expect(events.map(\.operation) == [.upsert, .upsert, .delete, .upsert])
        #expect(events.allSatisfy { $0.producer == "p1" && $0.entityType == .user && $0.entityID == "u1" })
        #expect(Set(events.map(\.messageID)).count == 4)
        #expect(try await store.outboxCount() == 4)
    }

    @Test func deletingAUserRemovesItFromItsGroups() async throws {
        let store = try SQLiteSourceStore(path: Fixtures.temporaryDatabasePath("cascade"), producer: "p1")
        _ = try await store.createUser(UserDraft(id: "u1", name: "A", email: "a@example.com"))
        _ = try await store.createUser(UserDraft(id: "u2", name: "B", email: "b@example.com"))
        _ = try await store.createGroup(GroupDraft(id: "g1", name: "One", memberIDs: ["u2", "u1"]))
        _ = try await store.createGroup(GroupDraft(id: "g2", name: "Two", memberIDs: ["u1"]))
        _ = try await store.deleteUser(id: "u1", expectedVersion: 1)
        #expect(try await store.group(id: "g1")?.memberIds == ["u2"])
        #expect(try await store.group(id: "g1")?.version == 2)
        #expect(try await store.group(id: "g2")?.memberIds == [])
        let groupEvents = try await outboxEvents(store).filter { $0.entityType == .group && $0.version == 2 }
        #expect(Set(groupEvents.map(\.entityID)) == ["g1", "g2"])
        #expect(groupEvents.allSatisfy { !$0.group.memberIds.contains("u1") })
    }

    @Test func membershipNeedsExistingUsersAndUnchangedMembershipMakesNoEvent() async throws {
        let store = try SQLiteSourceStore(path: Fixtures.temporaryDatabasePath("members"), producer: "p1")
        _ = try await store.createUser(UserDraft(id: "u1", name: "A", email: "a@example.com"))
        do {
            _ = try await store.createGroup(GroupDraft(id: "g1", name: "G", memberIDs: ["u1", "ghost"]))
            Issue.record("a group with an unknown member was created")
        } catch let error as SyncError {
            #expect(error.code == .notFound)
            #expect(error.message.contains("'ghost'"))
        }
        let group = try await store.createGroup(GroupDraft(id: "g1", name: "G"))
        let added = try await store.addGroupMembers(groupID: "g1", userIDs: ["u1"], expectedVersion: group.version)
        #expect(added.memberIds == ["u1"] && added.version == 2)
        let again = try await store.addGroupMembers(groupID: "g1", userIDs: ["u1"], expectedVersion: nil)
        #expect(again.version == 2)
        let removed = try await store.removeGroupMembers(groupID: "g1", userIDs: ["u1"], expectedVersion: 2)
        #expect(removed.memberIds.isEmpty && removed.version == 3)
        #expect(try await store.outboxCount() == 4)
    }

    @Test func outboxIsOrderedAndLeasedToOneRelay() async throws {
        let store = try SQLiteSourceStore(path: Fixtures.temporaryDatabasePath("lease"), producer: "p1")
        for index in 0..<5 {
            _ = try await store.createUser(UserDraft(id: "u\(index)", name: "N", email: "n\(index)@example.com"))
        }
        let first = try await store.claimOutbox(owner: "relay-a", lease: .seconds(30), limit: 3)
        #expect(first.map(\.entityID) == ["u0", "u1", "u2"])
        #expect(first.map(\.sequence) == first.map(\.sequence).sorted())
        #expect(try await store.claimOutbox(owner: "relay-b", lease: .seconds(30), limit: 3).isEmpty)
        try await store.removeOutbox(first.map(\.sequence))
        let rest = try await store.claimOutbox(owner: "relay-a", lease: .milliseconds(1), limit: 10)
        #expect(rest.map(\.entityID) == ["u3", "u4"])
        // The lease has lapsed: another relay may take over.
        try await Task.sleep(for: .milliseconds(5))
        #expect(try await store.claimOutbox(owner: "relay-b", lease: .seconds(30), limit: 10).count == 2)
    }

    @Test func invalidInputIsRejectedWithTheField() async throws {
        let store = try SQLiteSourceStore(path: Fixtures.temporaryDatabasePath("invalid"), producer: "p1")
        do {
            _ = try await store.createUser(UserDraft(id: "", name: "A", email: "a@example.com"))
            Issue.record("an empty id was accepted")
        } catch let error as SyncError {
            #expect(error.code == .invalidArgument && error.message.contains("user.id"))
        }
        #expect(try await store.outboxCount() == 0)
    }

    @Test func unusablePathIsAClearError() {
        do {
            _ = try SQLiteSourceStore(path: "/proc/entitysync/nope.sqlite", producer: "p")
            Issue.record("opened a store under /proc")
        } catch let error as SyncError {
            #expect(error.code == .storeUnavailable)
            #expect(error.message.contains("/proc/entitysync/nope.sqlite"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}

func validated(_ change: EntityChange) throws -> ValidatedChange {
    try ChangeCodec.validate(change, expected: nil).get()
}

@Suite struct SQLiteReplicaStoreTests {
    @Test func appliesOnlyNewerVersions() async throws {
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("replica"))
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

    /// Instances of a group starting together on a new file race to create the schema; every
    /// one of them must open it.
    @Test func instancesOpeningAFreshFileTogetherAllSucceed() async throws {
        for _ in 0..<10 {
            let path = Fixtures.temporaryDatabasePath("race")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 { group.addTask { _ = try SQLiteReplicaStore(path: path) } }
                try await group.waitForAll()
            }
        }
    }

    @Test func twoInstancesOnOneFileConverge() async throws {
        let path = Fixtures.temporaryDatabasePath("shared")
        let first = try SQLiteReplicaStore(path: path)
        let second = try SQLiteReplicaStore(path: path)
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
