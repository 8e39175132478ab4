import AMQPModel
import EntitySyncCore
import EntitySyncProto
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import Logging
import Synchronization
import Testing

/// A producer store with users (one updated, one deleted) and a group, and its whole snapshot.
private func seededSnapshot() async throws -> (SQLiteSourceStore, [EntityChange]) {
    let source = try SQLiteSourceStore(path: Fixtures.temporaryDatabasePath("source"), producer: "seed")
    for index in 0..<30 {
        _ = try await source.createUser(UserDraft(id: "u\(index)", name: "User \(index)", email: "u\(index)@example.com"))
    }
    _ = try await source.updateUser(UserDraft(id: "u1", name: "Renamed", email: "u1@example.com"), expectedVersion: 1)
    _ = try await source.deleteUser(id: "u3", expectedVersion: nil)
    _ = try await source.createGroup(GroupDraft(id: "g1", name: "Group", memberIDs: ["u1", "u2"]))
    var changes: [EntityChange] = []
    for kind in EntityKind.allCases { changes += try await source.snapshot(of: kind, after: nil, limit: 1000) }
    return (source, changes)
}

private func fastConfiguration() -> SnapshotBootstrap.Configuration {
    var configuration = SnapshotBootstrap.Configuration()
    configuration.backoff = Backoff(initial: .milliseconds(10), maximum: .milliseconds(50))
    configuration.heartbeatInterval = .milliseconds(50)
    return configuration
}

private func bootstrap(_ store: any ReplicaStore, instance: String = "test",
                       configuration: SnapshotBootstrap.Configuration = fastConfiguration()) -> SnapshotBootstrap {
    SnapshotBootstrap(store: store, kinds: Set(EntityKind.allCases), instance: instance, configuration: configuration,
                      logger: Logger(label: "bootstrap-test"))
}

private func streaming(_ changes: [EntityChange]) -> SnapshotBootstrap.SnapshotStream {
    { deliver in for change in changes { try await deliver(change) } }
}

private struct Unreachable: Error {}
private struct Refused: Error {}

private func storesMatch(_ replica: any ReplicaStore, _ source: SQLiteSourceStore) async throws -> Bool {
    let users = try await replica.versions(of: .user)
    let groups = try await replica.versions(of: .group)
    let expectedUsers = try await source.versions(of: .user)
    let expectedGroups = try await source.versions(of: .group)
    return users == expectedUsers && groups == expectedGroups
}

@Suite struct SnapshotBootstrapTests {
    @Test func stateIsReadFromTheRecordAndItsHeartbeat() {
        let now = Date()
        let started = BootstrapRecord(startedAt: now.addingTimeInterval(-60), startedBy: "a", attempts: 1,
                                      heartbeatAt: now.addingTimeInterval(-5))
        var stale = started
        stale.heartbeatAt = now.addingTimeInterval(-16)
        var completed = started
        completed.completedAt = now
        let cases: [(BootstrapRecord?, BootstrapState)] = [
            (nil, .queuesOnly), (started, .inProgress), (stale, .incomplete), (completed, .complete),
        ]
        for (record, expected) in cases {
            #expect(BootstrapState.assess(record, now: now, staleAfter: .seconds(15)) == expected)
        }
    }

    @Test func aSnapshotIsDueForAnEmptyStoreOrAnUnfinishedLoadOnly() {
        let now = Date()
        let started = BootstrapRecord(startedAt: now, startedBy: "a", attempts: 1, heartbeatAt: now)
        var completed = started
        completed.completedAt = now
        let cases: [(BootstrapRecord?, Bool, Bool)] = [
            (nil, true, true),          // empty, never loaded: a group added later or a rebuilt store
            (nil, false, false),        // filled by its queues alone
            (started, false, true),     // cut short part-way: finish it
            (started, true, true),
            (completed, false, false),
            (completed, true, false),
        ]
        for (record, empty, due) in cases {
            let assessment = SnapshotBootstrap.Assessment(
                state: BootstrapState.assess(record, now: now, staleAfter: .seconds(15)), record: record, storeIsEmpty: empty)
            #expect(assessment.needsSnapshot == due, "record \(String(describing: record)), empty \(empty)")
        }
        // A load that completed while the group consumed users only does not cover groups: a group
        // routed to it later has none of their history in its new queue.
        var usersOnly = completed
        usersOnly.marks = [.user: SnapshotMark(entities: 3, highestVersion: 2)]
        let state = BootstrapState.assess(usersOnly, now: now, staleAfter: .seconds(15))
        #expect(SnapshotBootstrap.Assessment(state: state, record: usersOnly, storeIsEmpty: false, kinds: [.user, .group]).needsSnapshot)
        #expect(!SnapshotBootstrap.Assessment(state: state, record: usersOnly, storeIsEmpty: false, kinds: [.user]).needsSnapshot)
    }

    @Test func anUnfinishedLoadIsLoadedAgainAndRecordedWithItsMarks() async throws {
        let (source, changes) = try await seededSnapshot()
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("replica"))
        // What a killed instance left: the load recorded as started, a third of the snapshot applied.
        _ = try await replica.beginBootstrap(instance: "killed", covering: [.user, .group], at: Date().addingTimeInterval(-600))
        for change in changes.prefix(10) {
            guard case .success(let validated) = ChangeCodec.validate(change, expected: EntityKind(change.entityType)) else {
                Issue.record("invalid seed change")
                return
            }
            _ = try await replica.apply(validated)
        }
        let before = try await bootstrap(replica).assess()
        #expect(before.state == .incomplete && before.needsSnapshot && !before.storeIsEmpty)

        let report = try await bootstrap(replica).load(from: "test", streaming(changes)) { _ in false }
        #expect(try await storesMatch(replica, source))
        #expect(report.applied == changes.count - 10 && report.stale == 10 && report.attempts == 1)
        #expect(report.marks[.user] == SnapshotMark(entities: 30, highestVersion: 2))
        #expect(report.marks[.group] == SnapshotMark(entities: 1, highestVersion: 1))
        let record = try #require(try await replica.bootstrapRecord())
        #expect(record.isCompleted && record.attempts == 2 && record.completedBy == "test")
        #expect(record.marks == report.marks)
        let after = try await bootstrap(replica).assess()
        #expect(after.state == .complete && !after.needsSnapshot)
    }

    /// Instances of one group share the store: loading it from two at once is harmless.
    @Test func twoInstancesLoadingAtOnceAgree() async throws {
        let (source, changes) = try await seededSnapshot()
        let path = Fixtures.temporaryDatabasePath("replica")
        let first = try SQLiteReplicaStore(path: path)
        let second = try SQLiteReplicaStore(path: path)
        async let a = bootstrap(first, instance: "a").load(from: "test", streaming(changes)) { _ in false }
        async let b = bootstrap(second, instance: "b").load(from: "test", streaming(changes)) { _ in false }
        let reports = try await [a, b]
        #expect(try await storesMatch(first, source))
        #expect(reports.map(\.applied).reduce(0, +) == changes.count, "each entity is applied once, by one of them")
        let record = try #require(try await first.bootstrapRecord())
        #expect(record.isCompleted)

        // An instance starting after the load completed does not load it again or reopen it.
        let late = try await bootstrap(second, instance: "late").load(from: "test", streaming(changes)) { _ in false }
        #expect(late.alreadyComplete && late.applied == 0)
        #expect(try await first.bootstrapRecord() == record)
    }

    @Test func anUnreachableProducerIsRetriedAndARefusalIsNot() async throws {
        let (source, changes) = try await seededSnapshot()
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("replica"))
        let calls = Mutex(0)
        let flaky: SnapshotBootstrap.SnapshotStream = { deliver in
            let call = calls.withLock { count -> Int in
                count += 1
                return count
            }
            // The second attempt breaks part-way, as a producer that dies mid-stream.
            if call == 2 { try await deliver(changes[0]) }
            if call <= 2 { throw Unreachable() }
            for change in changes { try await deliver(change) }
        }
        let report = try await bootstrap(replica).load(from: "test", flaky) { $0 is Unreachable }
        #expect(report.attempts == 3)
        #expect(try await storesMatch(replica, source))

        let other = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("refused"))
        await #expect(throws: Refused.self) {
            _ = try await bootstrap(other).load(from: "test", { _ in throw Refused() }) { $0 is Unreachable }
        }
        #expect(try await other.bootstrapRecord()?.isCompleted == false)
    }

    @Test func aStalledStreamIsAbandonedAndRetried() async throws {
        let (source, changes) = try await seededSnapshot()
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("replica"))
        var configuration = fastConfiguration()
        configuration.idleTimeout = .milliseconds(200)
        let calls = Mutex(0)
        let stalling: SnapshotBootstrap.SnapshotStream = { deliver in
            let call = calls.withLock { count -> Int in
                count += 1
                return count
            }
            // Accepts the call and never answers, as a frozen producer would.
            if call == 1 { try await Task.sleep(for: .seconds(3600)) }
            for change in changes { try await deliver(change) }
        }
        let started = ContinuousClock.now
        let report = try await bootstrap(replica, configuration: configuration).load(from: "test", stalling) { _ in false }
        #expect(report.attempts == 2)
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(try await storesMatch(replica, source))
    }

    @Test func cancellingAWaitingLoadEndsItAtOnce() async throws {
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("replica"))
        let load = Task {
            try await bootstrap(replica).load(from: "test", { _ in throw Unreachable() }) { $0 is Unreachable }
        }
        while try await replica.bootstrapRecord() == nil { try await Task.sleep(for: .milliseconds(10)) }
        let cancelled = ContinuousClock.now
        load.cancel()
        await #expect(throws: CancellationError.self) { _ = try await load.value }
        #expect(ContinuousClock.now - cancelled < .seconds(2))
        #expect(try await replica.bootstrapRecord()?.isCompleted == false)
    }

    @Test func theHeartbeatKeepsALoadInProgressForOtherInstances() async throws {
        let path = Fixtures.temporaryDatabasePath("replica")
        let replica = try SQLiteReplicaStore(path: path)
        let observer = try SQLiteReplicaStore(path: path)
        var configuration = fastConfiguration()
        configuration.staleAfter = .milliseconds(500)
        let load = Task {
            try await bootstrap(replica, configuration: configuration).load(from: "test", { _ in throw Unreachable() }) {
                $0 is Unreachable
            }
        }
        defer { load.cancel() }
        while try await observer.bootstrapRecord() == nil { try await Task.sleep(for: .milliseconds(10)) }
        // Twice staleAfter: only the heartbeat can keep it in progress.
        try await Task.sleep(for: .seconds(1))
        let observed = try await bootstrap(observer, configuration: configuration).assess()
        #expect(observed.state == .inProgress)
        load.cancel()
        _ = try? await load.value
        let deadline = ContinuousClock.now + .seconds(5)
        while try await bootstrap(observer, configuration: configuration).assess().state != .incomplete {
            guard ContinuousClock.now < deadline else {
                Issue.record("an abandoned load never turned incomplete")
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// What a consumer group does at start: load only when due, and only from a producer it was given.
@Suite struct SnapshotBootstrapStartTests {
    @Test func anEmptyStoreLoadsFromTheProducerAndALoadedOneDoesNotAgain() async throws {
        let (source, changes) = try await seededSnapshot()
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("replica"))
        let calls = Mutex(0)
        let producer = SnapshotBootstrap.Producer(name: "seed", stream: { deliver in
            calls.withLock { $0 += 1 }
            for change in changes { try await deliver(change) }
        }, isTransient: { _ in false })
        let report = try await bootstrap(replica).loadIfNeeded(from: producer)
        #expect(report?.applied == changes.count)
        #expect(try await storesMatch(replica, source))
        #expect(try await bootstrap(replica).loadIfNeeded(from: producer) == nil)
        #expect(calls.withLock { $0 } == 1)
    }

    @Test func withoutAProducerNothingIsLoadedAndTheStoreStaysAsItWas() async throws {
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("replica"))
        #expect(try await bootstrap(replica).loadIfNeeded(from: nil) == nil)
        #expect(try await replica.bootstrapRecord() == nil)
        #expect(try await replica.versions(of: .user).isEmpty)
    }

    @Test func aStoreFilledFromItsQueuesNeedsNoSnapshot() async throws {
        let replica = try SQLiteReplicaStore(path: Fixtures.temporaryDatabasePath("replica"))
        _ = try await replica.apply(try ChangeCodec.validate(Fixtures.userChange(), expected: .user).get())
        let producer = SnapshotBootstrap.Producer(name: "never", stream: { _ in throw Refused() }, isTransient: { _ in false })
        #expect(try await bootstrap(replica).loadIfNeeded(from: producer) == nil)
    }
}
