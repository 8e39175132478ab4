import EntitySyncCore
import EntitySyncProto
import EntitySyncTestSupport
import Foundation
import SwiftProtobuf
import Testing

func outboxEvents(_ store: any SourceStore) async throws -> [EntityChange] {
    try await store.claimOutbox(owner: "inspector", lease: .seconds(1), limit: 1000).map { try EntityChange(serializedBytes: $0.payload) }
}

/// The source store contract, run against every backend (SQLite always, PostgreSQL when started).
@Suite struct SourceStoreTests {
    @Test(arguments: StoreBackend.available) func versionsTombstonesAndOutboxInOneTransaction(backend: StoreBackend) async throws {
        let store = try await backend.place("source").source()
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

    @Test(arguments: StoreBackend.available) func deletingAUserRemovesItFromItsGroups(backend: StoreBackend) async throws {
        let store = try await backend.place("cascade").source()
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

    @Test(arguments: StoreBackend.available) func membershipNeedsExistingUsersAndUnchangedMembershipMakesNoEvent(backend: StoreBackend) async throws {
        let store = try await backend.place("members").source()
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

    /// Many mutations at once (which SQLite commits together): the ones that fail (a version
    /// mismatch, a duplicate, a missing member) fail alone with their own status, every other
    /// one commits with exactly one outbox event, and the outbox holds each entity's versions
    /// in order.
    @Test(arguments: StoreBackend.available) func concurrentMutationsFailAloneAndCommitTheRest(backend: StoreBackend) async throws {
        let store = try await backend.place("group-commit").source()
        _ = try await store.createUser(UserDraft(id: "taken", name: "Taken", email: "taken@example.com"))
        enum Outcome: Sendable, Equatable { case ok, failed(SyncError.Code) }
        let outcomes = try await withThrowingTaskGroup(of: (Int, Outcome).self) { group in
            for index in 0..<60 {
                group.addTask {
                    do {
                        switch index % 10 {
                        case 3:
                            _ = try await store.updateUser(UserDraft(id: "taken", name: "X", email: "x@example.com"),
                                                           expectedVersion: 99)
                        case 5:
                            _ = try await store.createUser(UserDraft(id: "taken", name: "Again", email: "again@example.com"))
                        case 7:
                            _ = try await store.createGroup(GroupDraft(id: "g\(index)", name: "G", memberIDs: ["nobody"]))
                        default:
                            _ = try await store.createUser(UserDraft(id: "u\(index)", name: "U", email: "u\(index)@example.com"))
                        }
                        return (index, .ok)
                    } catch let error as SyncError {
                        return (index, .failed(error.code))
                    }
                }
            }
            return try await group.reduce(into: [Int: Outcome]()) { $0[$1.0] = $1.1 }
        }
        for index in 0..<60 {
            switch index % 10 {
            case 3: #expect(outcomes[index] == .failed(.versionMismatch), "mutation \(index)")
            case 5: #expect(outcomes[index] == .failed(.alreadyExists), "mutation \(index)")
            case 7: #expect(outcomes[index] == .failed(.notFound), "mutation \(index)")
            default:
                #expect(outcomes[index] == .ok, "mutation \(index)")
                #expect(try await store.user(id: "u\(index)")?.version == 1)
            }
        }
        #expect(try await store.group(id: "g7") == nil)
        #expect(try await store.user(id: "taken")?.version == 1)
        let outbox = try await store.claimOutbox(owner: "r", lease: .seconds(30), limit: 1000)
        #expect(outbox.count == 1 + 42)
        #expect(Set(outbox.map(\.entityID)).count == outbox.count)
        #expect(outbox.map(\.sequence) == outbox.map(\.sequence).sorted())
    }

    @Test(arguments: StoreBackend.available) func outboxIsOrderedAndLeasedToOneRelay(backend: StoreBackend) async throws {
        let store = try await backend.place("lease").source()
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

    @Test(arguments: StoreBackend.available) func aClaimRemovesTheConfirmedRecordsFirst(backend: StoreBackend) async throws {
        let store = try await backend.place("claim-removing").source()
        for index in 0..<5 {
            _ = try await store.createUser(UserDraft(id: "u\(index)", name: "N", email: "n\(index)@example.com"))
        }
        let first = try await store.claimOutbox(owner: "relay-a", lease: .seconds(30), limit: 2)
        #expect(first.map(\.entityID) == ["u0", "u1"])
        // One transaction: the confirmed records go, the next ones come.
        let second = try await store.claimOutbox(owner: "relay-a", lease: .seconds(30), limit: 2, removing: first.map(\.sequence))
        #expect(second.map(\.entityID) == ["u2", "u3"])
        #expect(try await store.outboxCount() == 3)
        // A relay whose lease another took still removes what it published; it claims nothing.
        let removedByOther = try await store.claimOutbox(owner: "relay-b", lease: .seconds(30), limit: 10,
                                                         removing: [second[0].sequence])
        #expect(removedByOther.isEmpty)
        #expect(try await store.outboxCount() == 2)
        let rest = try await store.claimOutbox(owner: "relay-a", lease: .seconds(30), limit: 10, removing: [second[1].sequence])
        #expect(rest.map(\.entityID) == ["u4"])
    }

    @Test(arguments: StoreBackend.available) func aCallerGivingUpFailsNoOtherWrite(backend: StoreBackend) async throws {
        let store = try await backend.place("cancelled-writers").source()
        // Cancelled at once, while they queue behind each other's commits: whichever leads a
        // group, a caller that gives up may fail its own write, never another's.
        let tasks = (0..<40).map { index in
            Task { try await store.createUser(UserDraft(id: "u\(index)", name: "N", email: "n\(index)@example.com")) }
        }
        for task in tasks { task.cancel() }
        var created = 0
        for (index, task) in tasks.enumerated() {
            do {
                let user = try await task.value
                #expect(user.id == "u\(index)" && user.version == 1)
                created += 1
            } catch is CancellationError {
                // PostgreSQL gives a cancelled caller's transaction up; SQLite's group commit
                // finishes every write it took (a leader's caller cannot cancel the group).
                #expect(backend != .sqlite, "write \(index) failed although SQLite's group commit is not cancellable")
            }
        }
        let stored = try await store.listUsers(after: nil, limit: 100).count
        #expect(stored >= created)
        #expect(try await store.outboxCount() == stored)
        if backend == .sqlite { #expect(created == 40) }
    }

    @Test(arguments: StoreBackend.available) func invalidInputIsRejectedWithTheField(backend: StoreBackend) async throws {
        let store = try await backend.place("invalid").source()
        do {
            _ = try await store.createUser(UserDraft(id: "", name: "A", email: "a@example.com"))
            Issue.record("an empty id was accepted")
        } catch let error as SyncError {
            #expect(error.code == .invalidArgument && error.message.contains("user.id"))
        }
        #expect(try await store.outboxCount() == 0)
    }
}
