import EntitySyncProto
import Foundation

/// A consumer group's copy, shared by all its instances.
public protocol ReplicaStore: Sendable {
    /// Applies the change in one transaction if it is newer than what is held (`VersionRule`).
    func apply(_ change: ValidatedChange) async throws -> VersionRule.Decision
    /// Applies `changes` in order, each under the version rule, and returns each one's decision.
    /// A store that can does it in one transaction (one commit for all). If it throws, any of
    /// them may or may not be applied: applying them again is harmless.
    func apply(batch changes: [ValidatedChange]) async throws -> [VersionRule.Decision]
    func recordDeadLetter(_ kind: EntityKind) async throws
    /// Returns soon after a change is committed to the store by any instance of the group (or
    /// any time before, spuriously), or after `timeout`: how read-your-writes waits learn of
    /// changes other instances applied.
    func waitForCommit(timeout: Duration) async
    /// Throws if the store cannot take a write now (a server down, a file gone, a full disk, a
    /// read-only database, a write lock held by another past its wait): how a consumer tells an
    /// outage, which pauses it, from a failure of one change, which it retries.
    func checkReachable() async throws
    func user(id: String) async throws -> User?
    func group(id: String) async throws -> Group?
    func versions(of kind: EntityKind) async throws -> [String: EntityVersion]
    /// One entity's version (nil if never seen).
    func version(of kind: EntityKind, id: String) async throws -> EntityVersion?
    /// Several entities' versions read together (nil for one never seen), in the order asked.
    func versions(of entities: [(kind: EntityKind, id: String)]) async throws -> [EntityVersion?]
    func statistics() async throws -> [EntityKind: ReplicaStatistics]
    func listUsers(after: String?, limit: Int) async throws -> [User]
    func listGroups(after: String?, limit: Int) async throws -> [Group]
    /// The live users among `ids`, in the order asked for.
    func users(ids: [String]) async throws -> [User]
    /// Live groups `userID` belongs to, in id order after `after`.
    func groups(ofUser userID: String, after: String?, limit: Int) async throws -> [Group]
    /// Live member users of a group, in id order after `after`.
    func members(ofGroup groupID: String, after: String?, limit: Int) async throws -> [User]
    /// A live user and its first `groupLimit` live groups in id order, read together.
    func userWithGroups(id: String, groupLimit: Int) async throws -> UserWithGroups?

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

extension ReplicaStore {
    /// One change at a time: for stores without a transaction that spans several. If one throws,
    /// the ones before it stay applied; the consumer then applies them again one by one, and
    /// they count as stale.
    public func apply(batch changes: [ValidatedChange]) async throws -> [VersionRule.Decision] {
        var decisions: [VersionRule.Decision] = []
        for change in changes { decisions.append(try await self.apply(change)) }
        return decisions
    }

    /// One read per entity: for stores without a cheaper way.
    public func versions(of entities: [(kind: EntityKind, id: String)]) async throws -> [EntityVersion?] {
        var versions: [EntityVersion?] = []
        versions.reserveCapacity(entities.count)
        for entity in entities { versions.append(try await self.version(of: entity.kind, id: entity.id)) }
        return versions
    }

    /// A store that cannot tell when others commit: the caller polls every `timeout`.
    public func waitForCommit(timeout: Duration) async {
        try? await Task.sleep(for: timeout)
    }

    /// A store that cannot probe a write: a read that fails (a server down, a file gone) is the
    /// outage it can tell.
    public func checkReachable() async throws {
        _ = try await self.version(of: .user, id: "")
    }
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

/// A user with the groups it belongs to, as `UserQuery.GetUser` answers.
public typealias UserWithGroups = (user: User, groups: [Group])

extension ReplicaStore {
    public func userWithGroups(id: String, groupLimit: Int) async throws -> UserWithGroups? {
        guard let user = try await self.user(id: id) else { return nil }
        return (user, try await self.groups(ofUser: id, after: nil, limit: groupLimit))
    }
}

/// A store that can answer point reads on the calling thread without waiting for anything but
/// its own file (SQLite): the gRPC server answers these on its event loop, with no thread hop.
public protocol ImmediateReplicaReads: Sendable {
    /// Point reads made back to back on the calling thread until `end()`; from the second on
    /// they share one read transaction, so a burst of reads pays for one.
    func readSession() throws -> any ImmediateReadSession
}

extension ImmediateReplicaReads {
    /// Like `ReplicaStore.userWithGroups`, on the calling thread, already serialized as an
    /// `entitysync.v1.UserWithGroups` message (see `UserWithGroupsEncoding`); nil if no such user.
    public func userWithGroupsEncoded(id: String, groupLimit: Int) throws -> [UInt8]? {
        let session = try self.readSession()
        defer { session.end() }
        return try session.userWithGroupsEncoded(id: id, groupLimit: groupLimit)
    }
}

/// Reads on one thread, begun by `ImmediateReplicaReads.readSession()`. Its reads see one
/// snapshot of the store, taken no earlier than the session began; `end()` must follow soon (it
/// holds back the store's checkpoints), on the same thread.
public protocol ImmediateReadSession: AnyObject {
    /// A serialized `entitysync.v1.UserWithGroups` for user `id` with its first `groupLimit`
    /// live groups; nil if there is no live user `id`.
    func userWithGroupsEncoded(id: String, groupLimit: Int) throws -> [UInt8]?
    /// Ends the session's transaction and gives its connection back; the session is not used again.
    func end()
}

/// Builds a serialized `UserWithGroups` from the stored, already serialized `User` and `Group`
/// messages: an embedded message is its bytes behind a tag and a length, so nothing is decoded
/// and encoded again. Fields may be appended in any order (protobuf allows it); groups keep theirs.
public struct UserWithGroupsEncoding {
    public private(set) var bytes: [UInt8] = []

    public init() {
        self.bytes.reserveCapacity(256)
    }

    public mutating func appendUser(_ user: UnsafeRawBufferPointer) {
        self.append(field: 1, user)
    }

    public mutating func appendGroup(_ group: UnsafeRawBufferPointer) {
        self.append(field: 2, group)
    }

    private mutating func append(field: UInt8, _ message: UnsafeRawBufferPointer) {
        self.bytes.append(field << 3 | 2)
        var length = UInt64(message.count)
        while length >= 0x80 {
            self.bytes.append(UInt8(truncatingIfNeeded: length) | 0x80)
            length >>= 7
        }
        self.bytes.append(UInt8(length))
        self.bytes.append(contentsOf: message)
    }
}
