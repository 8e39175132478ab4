import EntitySyncProto
import Foundation

/// The whole new state of a user as a mutation gives it; the store assigns the version.
public struct UserDraft: Sendable, Equatable {
    public var id: String
    public var name: String
    public var email: String
    public var status: UserStatus
    public var attributes: [String: String]

    public init(id: String, name: String, email: String, status: UserStatus = .active, attributes: [String: String] = [:]) {
        self.id = id
        self.name = name
        self.email = email
        self.status = status
        self.attributes = attributes
    }
}

/// The whole new state of a group as a mutation gives it; the store assigns the version.
public struct GroupDraft: Sendable, Equatable {
    public var id: String
    public var name: String
    public var description: String
    public var memberIDs: [String]

    public init(id: String, name: String, description: String = "", memberIDs: [String] = []) {
        self.id = id
        self.name = name
        self.description = description
        self.memberIDs = memberIDs
    }
}

/// An entity's version and whether it is a tombstone.
public struct EntityVersion: Sendable, Hashable, CustomStringConvertible {
    public var version: UInt64
    public var deleted: Bool

    public init(version: UInt64, deleted: Bool) {
        self.version = version
        self.deleted = deleted
    }

    public var description: String { "v\(self.version)\(self.deleted ? " (deleted)" : "")" }
}

/// A change event waiting in the producer's outbox to be published.
public struct OutboxRecord: Sendable, Equatable {
    public var sequence: Int64
    public var kind: EntityKind
    public var entityID: String
    public var version: UInt64
    public var messageID: String
    /// The serialized `EntityChange`.
    public var payload: [UInt8]

    public init(sequence: Int64, kind: EntityKind, entityID: String, version: UInt64, messageID: String, payload: [UInt8]) {
        self.sequence = sequence
        self.kind = kind
        self.entityID = entityID
        self.version = version
        self.messageID = messageID
        self.payload = payload
    }
}

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

    /// Up to `limit` outbox records in commit order, if `owner` holds (or can take) the relay
    /// lease; empty while another relay holds it. Several producers on one store never publish
    /// the same rows concurrently.
    func claimOutbox(owner: String, lease: Duration, limit: Int) async throws -> [OutboxRecord]
    func removeOutbox(_ sequences: [Int64]) async throws
    /// Gives up the relay lease if `owner` holds it, so that a producer started next (a restart,
    /// a deploy) relays at once instead of waiting for the lease to run out.
    func releaseOutboxLease(owner: String) async throws
    func outboxCount() async throws -> Int
    /// Signalled after every committed mutation in this process.
    var commits: WakeSignal { get }
}

/// What a consumer group knows about one entity type.
public struct ReplicaStatistics: Sendable, Equatable {
    public var entities: Int = 0
    public var highestVersion: UInt64 = 0
    public var applied: Int = 0
    public var stale: Int = 0
    public var deadLettered: Int = 0
    public var lastAppliedAt: Date?

    public init() {}
}

/// A consumer group's copy, shared by all its instances.
public protocol ReplicaStore: Sendable {
    /// Applies the change in one transaction if it is newer than what is held (`VersionRule`).
    func apply(_ change: ValidatedChange) async throws -> VersionRule.Decision
    func recordDeadLetter(_ kind: EntityKind) async throws
    func user(id: String) async throws -> User?
    func group(id: String) async throws -> Group?
    func versions(of kind: EntityKind) async throws -> [String: EntityVersion]
    /// One entity's version (nil if never seen).
    func version(of kind: EntityKind, id: String) async throws -> EntityVersion?
    func statistics() async throws -> [EntityKind: ReplicaStatistics]
    func listUsers(after: String?, limit: Int) async throws -> [User]
    func listGroups(after: String?, limit: Int) async throws -> [Group]
    /// The live users among `ids`, in the order asked for.
    func users(ids: [String]) async throws -> [User]
    /// Live groups `userID` belongs to, in id order after `after`.
    func groups(ofUser userID: String, after: String?, limit: Int) async throws -> [Group]
    /// Live member users of a group, in id order after `after`.
    func members(ofGroup groupID: String, after: String?, limit: Int) async throws -> [User]

    /// What the store records about loading the producer's snapshot; nil if no load ever started.
    func bootstrapRecord() async throws -> BootstrapRecord?
    /// In one transaction: unless a completed load covered every one of `kinds`, records that
    /// `instance` starts one (counting the attempt; a completed load that misses a kind the group
    /// now consumes is started again). Returns the record as it then stands.
    func beginBootstrap(instance: String, covering kinds: Set<EntityKind>, at time: Date) async throws -> BootstrapRecord
    /// Records that the instance loading the snapshot is still at it (ignored once completed).
    func touchBootstrap(instance: String, at time: Date) async throws
    /// Records that a load ran to the snapshot's end, with the snapshot's high-water marks.
    func completeBootstrap(instance: String, marks: [EntityKind: SnapshotMark], at time: Date) async throws
}

/// Stores written before bootstrap state existed fail loudly rather than pretend a load completed.
extension ReplicaStore {
    public func bootstrapRecord() async throws -> BootstrapRecord? { throw Self.bootstrapUnsupported }
    public func beginBootstrap(instance: String, covering kinds: Set<EntityKind>, at time: Date) async throws -> BootstrapRecord {
        throw Self.bootstrapUnsupported
    }
    public func touchBootstrap(instance: String, at time: Date) async throws { throw Self.bootstrapUnsupported }
    public func completeBootstrap(instance: String, marks: [EntityKind: SnapshotMark], at time: Date) async throws {
        throw Self.bootstrapUnsupported
    }

    private static var bootstrapUnsupported: SyncError {
        SyncError(.configuration, "the replica store \(Self.self) does not record bootstrap state; implement "
                  + "bootstrapRecord, beginBootstrap, touchBootstrap and completeBootstrap for it")
    }
}

/// What one entity type of a producer's snapshot held: its entities (tombstones included) and
/// the highest version among them.
public struct SnapshotMark: Sendable, Hashable {
    public var entities: Int
    public var highestVersion: UInt64

    public init(entities: Int = 0, highestVersion: UInt64 = 0) {
        self.entities = entities
        self.highestVersion = highestVersion
    }
}

/// A replica store's record of loading the producer's snapshot into it, shared by every
/// instance of the group.
public struct BootstrapRecord: Sendable, Equatable {
    /// When the latest load started, and by which instance.
    public var startedAt: Date
    public var startedBy: String
    /// Loads started so far: more than one means one was cut short or instances raced (harmless).
    public var attempts: Int
    /// The last time a loading instance showed it was alive; a stale one means the load was abandoned.
    public var heartbeatAt: Date
    public var completedAt: Date?
    public var completedBy: String?
    /// Per entity type, what the snapshot that completed the bootstrap held (empty until then).
    public var marks: [EntityKind: SnapshotMark]

    public init(startedAt: Date, startedBy: String, attempts: Int, heartbeatAt: Date, completedAt: Date? = nil,
                completedBy: String? = nil, marks: [EntityKind: SnapshotMark] = [:]) {
        self.startedAt = startedAt
        self.startedBy = startedBy
        self.attempts = attempts
        self.heartbeatAt = heartbeatAt
        self.completedAt = completedAt
        self.completedBy = completedBy
        self.marks = marks
    }

    /// True once a load has run to the snapshot's end.
    public var isCompleted: Bool { self.completedAt != nil }

    /// A load completed and its snapshot covered each of `kinds` (a group that later consumes
    /// another entity type has none of that type's history yet).
    public func covers(_ kinds: Set<EntityKind>) -> Bool { self.isCompleted && kinds.isSubset(of: self.marks.keys) }
}
