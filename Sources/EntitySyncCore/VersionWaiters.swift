import Synchronization

/// Callers waiting for an entity to reach a version in this replica (read-your-writes through
/// `WaitForVersion`). The consumer that applies a change answers its waiters directly, with no
/// store read: each waiter used to re-read its entity after every batch any of them waited
/// through, which at a few hundred waits a second was most of a consumer's CPU. Changes another
/// instance of the group applied are found by one sweep of the waiting entities at most every
/// `recheckInterval`, woken by the store's commit signal; the same sweep ends waits whose
/// deadline passed.
public final class VersionWaiters: Sendable {
    private struct Key: Hashable {
        let kind: EntityKind
        let id: String
    }

    private struct Waiter {
        let version: UInt64
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<EntityVersion?, Never>
    }

    private struct State {
        var waiting: [Key: [Int: Waiter]] = [:]
        /// Waits ended (cancelled) before their continuation was registered.
        var ended: Set<Int> = []
        var nextID = 0
        /// Bumped by every `applied`: a wait that read the store before a bump and registers
        /// after it reads again, so an apply between its read and its registration is not missed.
        var generation: UInt64 = 0
        var sweeping = false
    }

    private let state = Mutex(State())
    private let store: any ReplicaStore
    private let recheckInterval: Duration

    /// Waits on `store`, the replica the owning consumer applies to.
    public init(store: any ReplicaStore, recheckInterval: Duration = .milliseconds(25)) {
        self.store = store
        self.recheckInterval = recheckInterval
    }

    /// Waits until `kind` `id` is at `version` or later here, or until `timeout` passes (nil),
    /// or the task is cancelled (nil).
    public func wait(_ kind: EntityKind, _ id: String, version: UInt64, timeout: Duration) async throws -> EntityVersion? {
        let key = Key(kind: kind, id: id)
        let deadline = ContinuousClock.now + timeout
        var reads = 0
        while true {
            let generation = self.state.withLock { $0.generation }
            if let held = try await self.store.version(of: kind, id: id), held.version >= version { return held }
            reads += 1
            // Applied while reading: read again (a few times; after that the sweep's recheck
            // covers the rare miss, so a fast stream of batches cannot keep a caller reading).
            let waiterID = self.state.withLock { state -> Int? in
                guard state.generation == generation || reads >= 3 else { return nil }
                state.nextID += 1
                return state.nextID
            }
            guard let waiterID else { continue }
            return await self.park(waiterID, key, version: version, deadline: deadline)
        }
    }

    private func park(_ waiterID: Int, _ key: Key, version: UInt64, deadline: ContinuousClock.Instant) async -> EntityVersion? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<EntityVersion?, Never>) in
                let (resumeNow, startSweep) = self.state.withLock { state -> (Bool, Bool) in
                    if state.ended.remove(waiterID) != nil { return (true, false) }
                    state.waiting[key, default: [:]][waiterID] = Waiter(version: version, deadline: deadline, continuation: continuation)
                    guard !state.sweeping else { return (false, false) }
                    state.sweeping = true
                    return (false, true)
                }
                if resumeNow { continuation.resume(returning: nil) }
                if startSweep { Task { await self.sweep() } }
            }
        } onCancel: {
            let continuation = self.state.withLock { state -> CheckedContinuation<EntityVersion?, Never>? in
                guard let waiter = state.waiting[key]?.removeValue(forKey: waiterID) else {
                    state.ended.insert(waiterID)
                    return nil
                }
                if state.waiting[key]?.isEmpty == true { state.waiting[key] = nil }
                return waiter.continuation
            }
            continuation?.resume(returning: nil)
        }
    }

    /// Answers the waits these committed changes satisfy: the entity's last applied version of
    /// the batch, with whether it is a tombstone.
    public func applied(_ changes: some Sequence<ValidatedChange>) {
        var newest: [Key: EntityVersion] = [:]
        for change in changes {
            let key = Key(kind: change.kind, id: change.entityID)
            if (newest[key]?.version ?? 0) < change.version {
                newest[key] = EntityVersion(version: change.version, deleted: change.isDelete)
            }
        }
        let answered = self.state.withLock { state -> [(CheckedContinuation<EntityVersion?, Never>, EntityVersion)] in
            state.generation &+= 1
            var answered: [(CheckedContinuation<EntityVersion?, Never>, EntityVersion)] = []
            for (key, held) in newest {
                guard var waiters = state.waiting[key] else { continue }
                for (waiterID, waiter) in waiters where waiter.version <= held.version {
                    waiters[waiterID] = nil
                    answered.append((waiter.continuation, held))
                }
                state.waiting[key] = waiters.isEmpty ? nil : waiters
            }
            return answered
        }
        for (continuation, held) in answered { continuation.resume(returning: held) }
    }

    /// Waits in progress.
    public var count: Int { self.state.withLock { $0.waiting.values.reduce(0) { $0 + $1.count } } }

    /// While anyone waits: ends the waits whose deadline passed, and reads the waiting entities
    /// again after another process's commit (at most every `recheckInterval`).
    private func sweep() async {
        var lastRecheck = ContinuousClock.now
        while true {
            await self.store.waitForCommit(timeout: self.recheckInterval)
            let now = ContinuousClock.now
            let recheck = now - lastRecheck >= self.recheckInterval
            let (expired, keys, done) = self.state.withLock { state -> ([CheckedContinuation<EntityVersion?, Never>], [Key], Bool) in
                var expired: [CheckedContinuation<EntityVersion?, Never>] = []
                for (key, waiters) in state.waiting {
                    var kept = waiters
                    for (waiterID, waiter) in waiters where waiter.deadline <= now {
                        kept[waiterID] = nil
                        expired.append(waiter.continuation)
                    }
                    state.waiting[key] = kept.isEmpty ? nil : kept
                }
                if state.waiting.isEmpty {
                    state.sweeping = false
                    return (expired, [], true)
                }
                return (expired, recheck ? Array(state.waiting.keys) : [], false)
            }
            for continuation in expired { continuation.resume(returning: nil) }
            if done { return }
            guard recheck else { continue }
            lastRecheck = now
            // One read for every waiting entity; a failed read leaves the waits to their
            // deadline or the next sweep.
            guard let found = try? await self.store.versions(of: keys.map { (kind: $0.kind, id: $0.id) }),
                  found.count == keys.count else { continue }
            let answered = self.state.withLock { state -> [(CheckedContinuation<EntityVersion?, Never>, EntityVersion)] in
                var answered: [(CheckedContinuation<EntityVersion?, Never>, EntityVersion)] = []
                for (key, held) in zip(keys, found) {
                    guard let held, var waiters = state.waiting[key] else { continue }
                    for (waiterID, waiter) in waiters where waiter.version <= held.version {
                        waiters[waiterID] = nil
                        answered.append((waiter.continuation, held))
                    }
                    state.waiting[key] = waiters.isEmpty ? nil : waiters
                }
                return answered
            }
            for (continuation, held) in answered { continuation.resume(returning: held) }
        }
    }
}
