import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization

/// A steady stream of mutations through the producer's admin API, from several concurrent
/// workers, recording the version every successful mutation returned: those changes were
/// promised to the client and must end up everywhere. A failed call's outcome is unknown (the
/// producer may have committed before it died), so it is only counted, never assumed.
final class LoadGenerator: Sendable {
    struct Tally: Sendable {
        var confirmed = 0
        var failed = 0
        var versions: [EntityKind: [String: UInt64]] = [:]
    }

    static let stableUsers = (0..<6).map { "stable-\($0)" }

    private let system: ChaosSystem
    private let workers: Int
    /// The producer instances the workers call, spread evenly.
    private let targets: [String]
    private let tally = Mutex(Tally())
    private let stopping = Atomic<Bool>(false)
    private let task = Mutex<Task<Void, any Error>?>(nil)

    init(system: ChaosSystem, workers: Int) {
        self.system = system
        self.workers = workers
        self.targets = system.instances.filter { $0.hasPrefix("producer") }
    }

    var confirmedCount: Int { self.tally.withLock { $0.confirmed } }
    var failedCount: Int { self.tally.withLock { $0.failed } }
    var confirmed: [EntityKind: [String: UInt64]] { self.tally.withLock { $0.versions } }

    private func record(_ kind: EntityKind, _ id: String, _ version: UInt64) {
        self.tally.withLock { tally in
            tally.confirmed += 1
            tally.versions[kind, default: [:]][id] = max(version, tally.versions[kind]?[id] ?? 0)
        }
    }

    /// Creates the users every group draws its members from, then starts the workers.
    func start() async throws {
        let admin = self.system
        try await admin.withClient("producer") { client in
            let api = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            for id in Self.stableUsers {
                let user = try await api.createUser(userRequest(id, name: "Stable \(id)"), metadata: admin.authorized)
                self.record(.user, id, user.version)
            }
        }
        let targets = self.targets
        let task = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, target) in targets.enumerated() {
                    group.addTask {
                        try await admin.withClient(target) { client in
                            let api = Entitysync_V1_EntityAdmin.Client(wrapping: client)
                            try await withThrowingTaskGroup(of: Void.self) { workers in
                                for worker in stride(from: index, to: self.workers, by: targets.count) {
                                    workers.addTask { try await self.work(worker, api: api) }
                                }
                                try await workers.waitForAll()
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        self.task.withLock { $0 = task }
    }

    /// Stops the workers after their calls in flight finish.
    func stop() async throws {
        self.stopping.store(true, ordering: .relaxed)
        try await self.task.withLock { $0 }?.value
    }

    private func work(_ worker: Int, api: Entitysync_V1_EntityAdmin.Client<HTTP2ClientTransport.Posix>) async throws {
        var random = SystemRandomNumberGenerator()
        var options = CallOptions.defaults
        options.timeout = .seconds(5)
        let metadata = self.system.authorized
        var step = 0
        while !self.stopping.load(ordering: .relaxed) {
            step += 1
            let roll = Int.random(in: 0..<100, using: &random)
            do {
                if roll < 60 {
                    let id = "w\(worker)-u\(Int.random(in: 0..<25, using: &random))"
                    try await self.upsertUser(id, name: "User \(id) #\(step)", api: api, metadata: metadata, options: options)
                } else if roll < 70 {
                    let id = "w\(worker)-u\(Int.random(in: 0..<25, using: &random))"
                    var request = Entitysync_V1_DeleteRequest()
                    request.id = id
                    let response = try await api.deleteUser(request, metadata: metadata, options: options)
                    self.record(.user, id, response.version)
                } else if roll < 95 {
                    let id = "w\(worker)-g\(Int.random(in: 0..<6, using: &random))"
                    let members = Self.stableUsers.filter { _ in Bool.random(using: &random) }
                    try await self.upsertGroup(id, members: members, step: step, api: api, metadata: metadata, options: options)
                } else {
                    var request = Entitysync_V1_DeleteRequest()
                    request.id = "w\(worker)-g\(Int.random(in: 0..<6, using: &random))"
                    let response = try await api.deleteGroup(request, metadata: metadata, options: options)
                    self.record(.group, request.id, response.version)
                }
            } catch let error as RPCError where error.code == .notFound || error.code == .alreadyExists {
                // Deleting what is gone, or creating what exists: the load's own races, not faults.
            } catch {
                self.tally.withLock { $0.failed += 1 }
                // The producer is down or restarting: back off a little rather than spin.
                try await Task.sleep(for: .milliseconds(100))
            }
            // Paces the load; not a synchronisation point.
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    private func upsertUser(_ id: String, name: String, api: Entitysync_V1_EntityAdmin.Client<HTTP2ClientTransport.Posix>,
                            metadata: Metadata, options: CallOptions) async throws {
        var update = Entitysync_V1_UpdateUserRequest()
        update.user = userRequest(id, name: name).user
        do {
            let user = try await api.updateUser(update, metadata: metadata, options: options)
            self.record(.user, id, user.version)
        } catch let error as RPCError where error.code == .notFound {
            let user = try await api.createUser(userRequest(id, name: name), metadata: metadata, options: options)
            self.record(.user, id, user.version)
        }
    }

    private func upsertGroup(_ id: String, members: [String], step: Int, api: Entitysync_V1_EntityAdmin.Client<HTTP2ClientTransport.Posix>,
                             metadata: Metadata, options: CallOptions) async throws {
        var group = Entitysync_V1_Group()
        group.id = id
        group.name = "Group \(id) #\(step)"
        group.memberIds = members
        do {
            var update = Entitysync_V1_UpdateGroupRequest()
            update.group = group
            let updated = try await api.updateGroup(update, metadata: metadata, options: options)
            self.record(.group, id, updated.version)
        } catch let error as RPCError where error.code == .notFound {
            var create = Entitysync_V1_CreateGroupRequest()
            create.group = group
            let created = try await api.createGroup(create, metadata: metadata, options: options)
            self.record(.group, id, created.version)
        }
    }

    /// The entities the probe changes, one per queue.
    static let probeUser = "stable-0"
    static let probeGroup = "probe"

    /// Changes one user and one group (retrying until the producer takes them) and returns their
    /// versions: markers that, once every group holds them, show both queues drained up to now.
    func probe() async throws -> (user: UInt64, group: UInt64) {
        let metadata = self.system.authorized
        let deadline = ContinuousClock.now + .seconds(120)
        var attempt = 0
        while true {
            // Each producer instance in turn, so a dead one does not stop the probe.
            let target = self.targets[attempt % self.targets.count]
            attempt += 1
            do {
                return try await self.system.withClient(target) { client in
                    let api = Entitysync_V1_EntityAdmin.Client(wrapping: client)
                    var options = CallOptions.defaults
                    options.timeout = .seconds(5)
                    var update = Entitysync_V1_UpdateUserRequest()
                    update.user = userRequest(Self.probeUser, name: "Probe \(UUID())").user
                    let user = try await api.updateUser(update, metadata: metadata, options: options)
                    self.record(.user, user.id, user.version)
                    try await self.upsertGroup(Self.probeGroup, members: [], step: 0, api: api, metadata: metadata, options: options)
                    let group = self.confirmed[.group]?[Self.probeGroup] ?? 0
                    return (user.version, group)
                }
            } catch {
                guard ContinuousClock.now < deadline else { throw HarnessError("no producer took a probe for 120 s: \(error)") }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }
}
