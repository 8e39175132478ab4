import AMQPModel
import Foundation
import Logging
import Synchronization

/// Loads a producer's snapshot into a consumer group's replica store, for a group whose queues
/// do not hold the whole history (added later, or its store rebuilt).
///
/// The store records that a load started, that its instance is alive, and that it completed with
/// the snapshot's high-water marks, so a load cut short is finished on the next start. Applying
/// goes through the version rule: a load that starts over, or two instances loading at once, or
/// the queue's events overlapping the snapshot, cannot make an entity regress.
public struct SnapshotBootstrap: Sendable {
    /// Timing of a load.
    public struct Configuration: Sendable {
        /// Delays between attempts while the producer is unreachable or its stream breaks.
        public var backoff = Backoff(initial: .milliseconds(200), maximum: .seconds(5))
        /// How often a loading instance records in the store that it is still at it.
        public var heartbeatInterval: Duration = .seconds(2)
        /// A load whose heartbeat is older than this counts as abandoned (`BootstrapState.incomplete`).
        public var staleAfter: Duration = .seconds(15)
        /// An attempt that receives nothing for this long is abandoned and retried: a producer that
        /// accepts the call and never answers must not hold the start for ever.
        public var idleTimeout: Duration = .seconds(60)

        public init() {}
    }

    /// Streams the snapshot: calls `deliver` once per entity and returns at the snapshot's end.
    public typealias SnapshotStream = @Sendable (_ deliver: @escaping @Sendable (EntityChange) async throws -> Void) async throws -> Void

    /// The store's bootstrap state and whether it needs a snapshot.
    public struct Assessment: Sendable, Equatable {
        public var state: BootstrapState
        public var record: BootstrapRecord?
        /// Nothing was ever applied to the store (no entity, no tombstone).
        public var storeIsEmpty: Bool
        /// The entity types the group consumes now.
        public var kinds: Set<EntityKind>

        public init(state: BootstrapState, record: BootstrapRecord?, storeIsEmpty: Bool, kinds: Set<EntityKind> = []) {
            self.state = state
            self.record = record
            self.storeIsEmpty = storeIsEmpty
            self.kinds = kinds
        }

        /// A load is due: a started one never completed, a completed one did not cover a type the
        /// group consumes now, or the store is empty and was never loaded.
        public var needsSnapshot: Bool {
            guard let record = self.record else { return self.storeIsEmpty }
            return !record.covers(self.kinds)
        }
    }

    /// What a load did.
    public struct Report: Sendable, Equatable {
        /// Per entity type: entities in the snapshot (tombstones included) and their highest version.
        public var marks: [EntityKind: SnapshotMark] = [:]
        /// Entries newer than what the store held, and applied.
        public var applied = 0
        /// Entries the store already held at that version or newer.
        public var stale = 0
        /// Entries that failed validation and were left out (each logged).
        public var rejected = 0
        /// Attempts it took (1 unless the producer was unreachable or a stream broke).
        public var attempts = 0
        /// Another instance had completed the load before this one began: nothing was loaded.
        public var alreadyComplete = false

        public init() {}
    }

    public let store: any ReplicaStore
    /// The entity types the group consumes; the snapshot's other entries are skipped.
    public let kinds: Set<EntityKind>
    /// The instance's name, recorded in the store.
    public let instance: String
    public let configuration: Configuration
    let logger: Logger

    public init(store: any ReplicaStore, kinds: Set<EntityKind>, instance: String, configuration: Configuration = Configuration(),
                logger: Logger) {
        self.store = store
        self.kinds = kinds
        self.instance = instance
        self.configuration = configuration
        self.logger = logger
    }

    /// Reads the store's bootstrap state.
    public func assess(now: Date = Date()) async throws -> Assessment {
        let record = try await self.store.bootstrapRecord()
        let statistics = try await self.store.statistics()
        let empty = statistics.values.allSatisfy { $0.entities == 0 && $0.applied == 0 && $0.stale == 0 }
        return Assessment(state: .assess(record, now: now, staleAfter: self.configuration.staleAfter), record: record,
                          storeIsEmpty: empty, kinds: self.kinds)
    }

    /// Loads the snapshot `stream` delivers until an attempt reaches its end, then records the
    /// load as completed. Attempts failing with an error `isTransient` accepts (or a store
    /// failure, or an attempt that stalls) are retried after a growing delay, one warning each;
    /// any other error ends the load with that error. Cancellation ends it with `CancellationError`.
    /// `source` names the producer in logs.
    public func load(from source: String, _ stream: @escaping SnapshotStream,
                     isTransient: @escaping @Sendable (any Error) -> Bool) async throws -> Report {
        do {
            return try await self.loadRecorded(from: source, stream, isTransient: isTransient)
        } catch {
            // A store call cut short by cancellation reports it as a store failure; the cause is the cancellation.
            if Task.isCancelled { throw CancellationError() }
            throw error
        }
    }

    private func loadRecorded(from source: String, _ stream: @escaping SnapshotStream,
                              isTransient: @escaping @Sendable (any Error) -> Bool) async throws -> Report {
        let begun = try await self.store.beginBootstrap(instance: self.instance, covering: self.kinds, at: Date())
        guard !begun.covers(self.kinds) else {
            self.logger.info("another instance completed the snapshot load; nothing to load", metadata: [
                "completed_by": "\(begun.completedBy ?? "")",
            ])
            var report = Report()
            report.alreadyComplete = true
            return report
        }
        self.logger.info("loading the producer's snapshot", metadata: [
            "producer": "\(source)", "bootstrap.attempt": "\(begun.attempts)",
        ])
        return try await withThrowingTaskGroup(of: Report?.self) { group in
            group.addTask {
                await self.heartbeat()
                return nil
            }
            group.addTask { try await self.loadRetrying(from: source, stream, isTransient: isTransient) }
            while let result = try await group.next() {
                if let report = result {
                    group.cancelAll()
                    return report
                }
            }
            throw CancellationError()
        }
    }

    /// Keeps the store's heartbeat fresh so other instances see the load as in progress.
    private func heartbeat() async {
        while true {
            do {
                try await Task.sleep(for: self.configuration.heartbeatInterval)
            } catch {
                return
            }
            do {
                try await self.store.touchBootstrap(instance: self.instance, at: Date())
            } catch {
                self.logger.warning("could not record the snapshot load's heartbeat", metadata: ["error": "\(error)"])
            }
        }
    }

    private func loadRetrying(from source: String, _ stream: @escaping SnapshotStream,
                              isTransient: @escaping @Sendable (any Error) -> Bool) async throws -> Report {
        var attempt = 0
        while true {
            try Task.checkCancellation()
            do {
                var report = try await self.attempt(stream)
                // A type the snapshot had nothing of is covered all the same: recorded with zero.
                for kind in self.kinds where report.marks[kind] == nil { report.marks[kind] = SnapshotMark() }
                try await self.store.completeBootstrap(instance: self.instance, marks: report.marks, at: Date())
                report.attempts = attempt + 1
                self.logger.info("snapshot loaded", metadata: [
                    "producer": "\(source)", "applied": "\(report.applied)", "stale": "\(report.stale)",
                    "rejected": "\(report.rejected)", "attempts": "\(report.attempts)",
                    "marks": "\(Self.describe(report.marks))",
                ])
                return report
            } catch {
                // A cancelled call may surface as its transport's own error; the cause is the cancellation.
                if Task.isCancelled { throw CancellationError() }
                guard error is SnapshotStalled || (error as? SyncError)?.code == .storeUnavailable || isTransient(error) else {
                    throw error
                }
                let delay = self.configuration.backoff.delay(attempt: attempt)
                attempt += 1
                let cause = (error as? SyncError)?.code == .storeUnavailable
                    ? "the replica store failed while loading the snapshot; retrying"
                    : "producer's snapshot not available yet; retrying"
                self.logger.warning("\(cause)", metadata: [
                    "producer": "\(source)", "error": "\(error)", "retry_in": "\(delay)", "attempt": "\(attempt)",
                ])
                try await Task.sleep(for: delay)
            }
        }
    }

    /// "group: 1 up to v1, user: 40 up to v2", for logs.
    private static func describe(_ marks: [EntityKind: SnapshotMark]) -> String {
        marks.sorted { $0.key < $1.key }
            .map { "\($0.key.rawValue): \($0.value.entities) up to v\($0.value.highestVersion)" }
            .joined(separator: ", ")
    }

    /// One pass over the snapshot, abandoned if it stalls.
    private func attempt(_ stream: @escaping SnapshotStream) async throws -> Report {
        let progress = LoadProgress()
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await stream { change in try await self.apply(change, progress) } }
                group.addTask { try await self.watch(progress) }
                // The stream's end (or first failure) decides; the watchdog only ever throws.
                try await group.next()
                group.cancelAll()
            }
        } catch {
            // The transport may wrap what the store threw; classify by the store's own error.
            if let failure = progress.storeFailure { throw failure }
            throw error
        }
        return progress.report
    }

    private func watch(_ progress: LoadProgress) async throws {
        let idle = self.configuration.idleTimeout
        while true {
            try await Task.sleep(for: idle / 4)
            if ContinuousClock.now - progress.lastActivity > idle { throw SnapshotStalled(idle: idle) }
        }
    }

    private func apply(_ change: EntityChange, _ progress: LoadProgress) async throws {
        progress.touch()
        guard let kind = EntityKind(change.entityType), self.kinds.contains(kind) else { return }
        switch ChangeCodec.validate(change, expected: kind) {
        case .success(let validated):
            let decision: VersionRule.Decision
            do {
                decision = try await self.store.apply(validated)
            } catch {
                progress.failed(error)
                throw error
            }
            progress.applied(kind: kind, version: validated.version, decision: decision)
        case .failure(let reason):
            progress.rejected()
            self.logger.warning("snapshot entry rejected; left out", metadata: [
                "entity.type": "\(kind.rawValue)", "entity.id": "\(change.entityID)", "reason": "\(reason)",
            ])
        }
    }
}

/// An attempt that received nothing for too long.
struct SnapshotStalled: Error, CustomStringConvertible {
    var idle: Duration
    var description: String { "the producer sent nothing of its snapshot for \(self.idle)" }
}

/// One attempt's counts, shared between the stream's callback and the watchdog.
private final class LoadProgress: Sendable {
    private struct State {
        var report = SnapshotBootstrap.Report()
        var lastActivity = ContinuousClock.now
        var storeFailure: (any Error)?
    }

    private let state = Mutex(State())

    var report: SnapshotBootstrap.Report { self.state.withLock { $0.report } }
    var lastActivity: ContinuousClock.Instant { self.state.withLock { $0.lastActivity } }
    var storeFailure: (any Error)? { self.state.withLock { $0.storeFailure } }

    func touch() { self.state.withLock { $0.lastActivity = .now } }

    func failed(_ error: any Error) { self.state.withLock { $0.storeFailure = error } }

    func rejected() { self.state.withLock { $0.report.rejected += 1 } }

    func applied(kind: EntityKind, version: UInt64, decision: VersionRule.Decision) {
        self.state.withLock { state in
            var mark = state.report.marks[kind] ?? SnapshotMark()
            mark.entities += 1
            mark.highestVersion = max(mark.highestVersion, version)
            state.report.marks[kind] = mark
            if decision == .apply { state.report.applied += 1 } else { state.report.stale += 1 }
        }
    }
}
