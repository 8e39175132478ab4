import EntitySyncProto
import Foundation

/// The producer's source of truth. Every mutation changes the entity, increments its version and
/// inserts its change event into the outbox in one transaction.
public protocol SourceStore: Sendable {
    func createUser(_ draft: UserDraft) async throws -> User
    func updateUser(_ draft: UserDraft, expectedVersion: UInt64?) async throws -> User
    /// Deletes the user (leaving a tombstone) and removes it from every group it was in, each
    /// such group getting a new version and its own event. Returns the tombstone's version.
    func deleteUser(id: String, expectedVersion: UInt64?) async throws -> UInt64
    func createGroup(_ draft: GroupDraft) async throws -> Group
    func updateGroup(_ draft: GroupDraft, expectedVersion: UInt64?) async throws -> Group
    func deleteGroup(id: String, expectedVersion: UInt64?) async throws -> UInt64
    func addGroupMembers(groupID: String, userIDs: [String], expectedVersion: UInt64?) async throws -> Group
    func removeGroupMembers(groupID: String, userIDs: [String], expectedVersion: UInt64?) async throws -> Group
    func user(id: String) async throws -> User?
    func group(id: String) async throws -> Group?
    /// Every entity of a kind with its version, tombstones included.
    func versions(of kind: EntityKind) async throws -> [String: EntityVersion]
    /// Live users with ids after `after` (exclusive), in id order.
    func listUsers(after: String?, limit: Int) async throws -> [User]
    func listGroups(after: String?, limit: Int) async throws -> [Group]
    /// Entities of a kind after `after` in id order, tombstones included, each as the change
    /// event that produces its current state (for bootstrapping a new consumer group).
    func snapshot(of kind: EntityKind, after: String?, limit: Int) async throws -> [EntityChange]

    /// Removes the `confirmed` records (published by this relay, whatever the lease says now),
    /// then returns up to `limit` outbox records in commit order, if `owner` holds (or can take)
    /// the relay lease; empty while another relay holds it. One transaction: a relay pays one
    /// round trip to the store per batch. Several producers on one store never publish the same
    /// rows concurrently.
    func claimOutbox(owner: String, lease: Duration, limit: Int, removing confirmed: [Int64]) async throws -> [OutboxRecord]
    func removeOutbox(_ sequences: [Int64]) async throws
    /// Gives up the relay lease if `owner` holds it, so that a producer started next (a restart,
    /// a deploy) relays at once instead of waiting for the lease to run out.
    func releaseOutboxLease(owner: String) async throws
    func outboxCount() async throws -> Int
    /// Signalled after every committed mutation in this process.
    var commits: WakeSignal { get }
}

extension SourceStore {
    /// Up to `limit` outbox records in commit order, if `owner` holds (or can take) the relay
    /// lease; empty while another relay holds it.
    public func claimOutbox(owner: String, lease: Duration, limit: Int) async throws -> [OutboxRecord] {
        try await self.claimOutbox(owner: owner, lease: lease, limit: limit, removing: [])
    }
}
