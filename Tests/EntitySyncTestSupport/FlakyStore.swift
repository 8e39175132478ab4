import EntitySyncCore

/// A replica store whose apply fails (as a busy or broken store would) a set number of times per
/// entity, and which can be taken down altogether (as a database server that stopped).
public actor FlakyStore: ReplicaStore {
    private let wrapped: any ReplicaStore
    private var remainingFailures: [String: Int]
    private var attemptsByEntity: [String: Int] = [:]
    private var down = false
    /// Versions read while down: how often a paused consumer has checked on it.
    public private(set) var readsWhileDown = 0

    /// The size of every batch applied in one go.
    public private(set) var batchSizes: [Int] = []

    public init(wrapping wrapped: any ReplicaStore, failuresPerEntity: [String: Int] = [:]) {
        self.wrapped = wrapped
        self.remainingFailures = failuresPerEntity
    }

    public func attempts(for id: String) -> Int { self.attemptsByEntity[id, default: 0] }

    /// While down, applying and reading a version fail as an unreachable server does.
    public func set(down: Bool) { self.down = down }

    /// While read-only, applying fails and reads work, as on a full disk or a read-only database.
    public func set(readOnly: Bool) { self.readOnly = readOnly }
    private var readOnly = false
    /// Write probes that failed: how often a paused consumer has checked on the store.
    public private(set) var probesWhileUnwritable = 0

    public func checkReachable() async throws {
        if self.down || self.readOnly {
            self.probesWhileUnwritable += 1
            if self.down { self.readsWhileDown += 1 }
            throw SyncError(.storeUnavailable, self.down ? "simulated: the database server is down" : "simulated: the disk is full")
        }
        try await self.wrapped.checkReachable()
    }

    public func apply(_ change: ValidatedChange) async throws -> VersionRule.Decision {
        self.attemptsByEntity[change.entityID, default: 0] += 1
        if self.down { throw SyncError(.storeUnavailable, "simulated: the database server is down") }
        if self.readOnly { throw SyncError(.storeUnavailable, "simulated: the disk is full") }
        if let remaining = self.remainingFailures[change.entityID], remaining > 0 {
            self.remainingFailures[change.entityID] = remaining - 1
            throw SyncError(.storeUnavailable, "simulated: database is locked")
        }
        return try await self.wrapped.apply(change)
    }

    /// Fails as a whole, as one transaction would, if any change in it would fail alone. That
    /// failure is not counted against the change: the consumer then applies the batch one change
    /// at a time, and those attempts are the ones its retry rule counts.
    public func apply(batch changes: [ValidatedChange]) async throws -> [VersionRule.Decision] {
        if self.down { throw SyncError(.storeUnavailable, "simulated: the database server is down") }
        if self.readOnly { throw SyncError(.storeUnavailable, "simulated: the disk is full") }
        if changes.contains(where: { (self.remainingFailures[$0.entityID] ?? 0) > 0 }) {
            throw SyncError(.storeUnavailable, "simulated: database is locked")
        }
        for change in changes { self.attemptsByEntity[change.entityID, default: 0] += 1 }
        self.batchSizes.append(changes.count)
        return try await self.wrapped.apply(batch: changes)
    }

    public func recordDeadLetter(_ kind: EntityKind) async throws { try await self.wrapped.recordDeadLetter(kind) }
    public func user(id: String) async throws -> User? { try await self.wrapped.user(id: id) }
    public func group(id: String) async throws -> Group? { try await self.wrapped.group(id: id) }
    public func versions(of kind: EntityKind) async throws -> [String: EntityVersion] { try await self.wrapped.versions(of: kind) }
    public func statistics() async throws -> [EntityKind: ReplicaStatistics] { try await self.wrapped.statistics() }
    public func version(of kind: EntityKind, id: String) async throws -> EntityVersion? {
        if self.down {
            self.readsWhileDown += 1
            throw SyncError(.storeUnavailable, "simulated: the database server is down")
        }
        return try await self.wrapped.version(of: kind, id: id)
    }
    public func listUsers(after: String?, limit: Int) async throws -> [User] { try await self.wrapped.listUsers(after: after, limit: limit) }
    public func listGroups(after: String?, limit: Int) async throws -> [Group] { try await self.wrapped.listGroups(after: after, limit: limit) }
    public func users(ids: [String]) async throws -> [User] { try await self.wrapped.users(ids: ids) }
    public func groups(ofUser userID: String, after: String?, limit: Int) async throws -> [Group] {
        try await self.wrapped.groups(ofUser: userID, after: after, limit: limit)
    }
    public func members(ofGroup groupID: String, after: String?, limit: Int) async throws -> [User] {
        try await self.wrapped.members(ofGroup: groupID, after: after, limit: limit)
    }
}
