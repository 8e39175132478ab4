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
        let continuation: CheckedContinuation<Parked, Never>
    }

    /// How a parked wait ended.
    private enum Parked {
        case held(EntityVersion)
        /// Its deadline passed, or its task was cancelled.
        case ended
        /// Something was applied between its store read and its registration: read again.
        case readAgain
    }

    private struct State {
        var waiting: [Key: [Int: Waiter]] = [:]
        var count = 0
        /// No waiter's deadline is earlier: the sweep scans for expired waits only from then.
        var earliestDeadline: ContinuousClock.Instant?
        /// Waits cancelled before their continuation was registered.
        var ended: Set<Int> = []
        var nextID = 0
        /// Bumped by every `applied`: a wait that read the store before a bump and registers
        /// after it reads again, so an apply between its read and its registration is not missed.
        var generation: UInt64 = 0
        var sweeping = false

        /// Removes the waiters of `key` that `satisfied` picks; their continuations.
        mutating func take(_ key: Key, where satisfied: (Waiter) -> Bool) -> [CheckedContinuation<Parked, Never>] {
            guard var waiters = self.waiting[key] else { return [] }
            var taken: [CheckedContinuation<Parked, Never>] = []
            for (waiterID, waiter) in waiters where satisfied(waiter) {
                waiters[waiterID] = nil
                taken.append(waiter.continuation)
            }
            guard !taken.isEmpty else { return [] }
            self.waiting[key] = waiters.isEmpty ? nil : waiters
            self.count -= taken.count
            if self.count == 0 { self.waiting = [:] }
            return taken
        }

        /// Removes one waiter; its continuation, if it was still waiting.
        mutating func remove(_ key: Key, _ waiterID: Int) -> CheckedContinuation<Parked, Never>? {
            guard let waiter = self.waiting[key]?.removeValue(forKey: waiterID) else { return nil }
            if self.waiting[key]?.isEmpty == true { self.waiting[key] = nil }
            self.count -= 1
            if self.count == 0 { self.waiting = [:] }
            return waiter.continuation
        }
    }

    private let state = Mutex(State())
    private let store: any ReplicaStore
    private let recheckInterval: Duration

    /// Waits on `store`, the replica the owning consumer applies to.
    public init(store: any ReplicaStore, recheckInterval: Duration = .milliseconds(25)) {
        self.store = store
        self.recheckInterval = recheckInterval
    }

    /// Waits until `kind` `id` is at `version` or later here, or until `timeout` passes (nil).
    /// Throws `CancellationError` if the task is cancelled.
    public func wait(_ kind: EntityKind, _ id: String, version: UInt64, timeout: Duration) async throws -> EntityVersion? {
        let key = Key(kind: kind, id: id)
        let deadline = ContinuousClock.now + timeout
        var reads = 0
        while true {
            let generation = self.state.withLock { $0.generation }
            if let held = try await self.store.version(of: kind, id: id), held.version >= version { return held }
            reads += 1
            try Task.checkCancellation()
            guard ContinuousClock.now < deadline else { return nil }
            // After a few reads the sweep's recheck covers a miss, so that a fast stream of
            // batches cannot keep a caller reading.
            switch await self.park(key, version: version, deadline: deadline, generation: reads < 3 ? generation : nil) {
            case .held(let held): return held
            case .ended:
                try Task.checkCancellation()
                return nil
            case .readAgain: continue
            }
        }
    }

    private func park(_ key: Key, version: UInt64, deadline: ContinuousClock.Instant, generation: UInt64?) async -> Parked {
        let waiterID = self.state.withLock { state -> Int in
            state.nextID += 1
            return state.nextID
        }
        let parked = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Parked, Never>) in
                let (outcome, startSweep) = self.state.withLock { state -> (Parked?, Bool) in
                    if state.ended.remove(waiterID) != nil { return (.ended, false) }
                    // Checked under the lock `applied` takes: no apply can slip in between.
                    if let generation, state.generation != generation { return (.readAgain, false) }
                    state.waiting[key, default: [:]][waiterID] = Waiter(version: version, deadline: deadline, continuation: continuation)
                    state.count += 1
                    state.earliestDeadline = min(state.earliestDeadline ?? deadline, deadline)
                    guard !state.sweeping else { return (nil, false) }
                    state.sweeping = true
                    return (nil, true)
                }
                if let outcome { continuation.resume(returning: outcome) }
                if startSweep { Task { await self.sweep() } }
            }
        } onCancel: {
            let continuation = self.state.withLock { state -> CheckedContinuation<Parked, Never>? in
                guard let continuation = state.remove(key, waiterID) else {
                    // Not registered yet; or answered already, and then removed again below.
                    state.ended.insert(waiterID)
                    return nil
                }
                return continuation
            }
            continuation?.resume(returning: .ended)
        }
        // A cancellation that came after the wait was answered left its id behind.
        self.state.withLock { _ = $0.ended.remove(waiterID) }
        return parked
    }

    /// Answers the waits these committed changes satisfy: the entity's newest applied version of
    /// the batch, with whether it is a tombstone.
    public func applied(_ changes: some Sequence<ValidatedChange>) {
        let answered = self.state.withLock { state -> [(CheckedContinuation<Parked, Never>, EntityVersion)] in
            state.generation &+= 1
            guard state.count > 0 else { return [] }
            var newest: [Key: EntityVersion] = [:]
            for change in changes {
                let key = Key(kind: change.kind, id: change.entityID)
                guard state.waiting[key] != nil else { continue }
                if (newest[key]?.version ?? 0) < change.version {
                    newest[key] = EntityVersion(version: change.version, deleted: change.isDelete)
                }
            }
            var answered: [(CheckedContinuation<Parked, Never>, EntityVersion)] = []
            for (key, held) in newest {
                for continuation in state.take(key, where: { $0.version <= held.version }) { answered.append((continuation, held)) }
            }
            return answered
        }
        for (continuation, held) in answered { continuation.resume(returning: .held(held)) }
    }

    /// Waits in progress.
    public var count: Int { self.state.withLock { $0.count } }

    /// While anyone waits: ends the waits whose deadline passed, and reads the waiting entities
    /// again after another process's commit (at most every `recheckInterval`).
    private func sweep() async {
        var lastRecheck = ContinuousClock.now
        var nap = self.recheckInterval
        while true {
            await self.store.waitForCommit(timeout: nap)
            let now = ContinuousClock.now
            let recheck = now - lastRecheck >= self.recheckInterval
            let (expired, keys, next) = self.state.withLock { state -> ([CheckedContinuation<Parked, Never>], [Key], ContinuousClock.Instant?) in
                var expired: [CheckedContinuation<Parked, Never>] = []
                if let earliest = state.earliestDeadline, earliest <= now {
                    var earliestLeft: ContinuousClock.Instant?
                    for key in Array(state.waiting.keys) {
                        expired += state.take(key) { $0.deadline <= now }
                        if let left = state.waiting[key] {
                            for waiter in left.values { earliestLeft = min(earliestLeft ?? waiter.deadline, waiter.deadline) }
                        }
                    }
                    state.earliestDeadline = earliestLeft
                }
                if state.count == 0 {
                    state.sweeping = false
                    state.earliestDeadline = nil
                    return (expired, [], nil)
                }
                return (expired, recheck ? Array(state.waiting.keys) : [], state.earliestDeadline)
            }
            for continuation in expired { continuation.resume(returning: .ended) }
            guard let next else { return }
            // Wakes by the earliest deadline, so a short wait ends on time.
            nap = max(.milliseconds(1), min(self.recheckInterval, next - ContinuousClock.now))
            guard recheck else { continue }
            lastRecheck = now
            // One read for every waiting entity (one transaction on SQLite); a failed read leaves
            // the waits to their deadline or the next sweep.
            guard let found = try? await self.store.versions(of: keys.map { (kind: $0.kind, id: $0.id) }),
                  found.count == keys.count else { continue }
            let answered = self.state.withLock { state -> [(CheckedContinuation<Parked, Never>, EntityVersion)] in
                var answered: [(CheckedContinuation<Parked, Never>, EntityVersion)] = []
                for (key, held) in zip(keys, found) {
                    guard let held else { continue }
                    for continuation in state.take(key, where: { $0.version <= held.version }) { answered.append((continuation, held)) }
                }
                return answered
            }
            for (continuation, held) in answered { continuation.resume(returning: .held(held)) }
        }
    }
}
