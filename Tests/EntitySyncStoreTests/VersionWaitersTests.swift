import EntitySyncCore
import EntitySyncProto
import EntitySyncTestSupport
import Testing

/// WaitForVersion's waits: answered by the consumer that applies the change (no store read),
/// found in the store when another instance applied it, ended by their deadline or by
/// cancellation.
@Suite struct VersionWaitersTests {
    @Test(arguments: StoreBackend.available) func aWaitIsAnsweredByTheApplyThatReachesItsVersion(backend: StoreBackend) async throws {
        let replica = try await backend.place("waiters-applied").replica()
        let waiters = VersionWaiters(store: replica, recheckInterval: .milliseconds(200))
        let waiting = Task { try await waiters.wait(.user, "u1", version: 2, timeout: .seconds(60)) }
        try await eventually("the wait is registered") { waiters.count == 1 }
        // An older version, or another entity, does not answer it.
        waiters.applied([try validated(Fixtures.userChange("u1", version: 1)), try validated(Fixtures.userChange("u2", version: 9))])
        #expect(waiters.count == 1)
        // Only the apply can answer it: the store never holds v2.
        var delete = Fixtures.userChange("u1", version: 2)
        delete.operation = .delete
        delete.state = nil
        waiters.applied([try validated(delete)])
        #expect(try await waiting.value == EntityVersion(version: 2, deleted: true))
        #expect(waiters.count == 0)
        // Several versions of one entity in a batch: the newest answers, with its tombstone flag.
        let second = Task { try await waiters.wait(.user, "u3", version: 4, timeout: .seconds(60)) }
        try await eventually("the second wait is registered") { waiters.count == 1 }
        var gone = Fixtures.userChange("u3", version: 5)
        gone.operation = .delete
        gone.state = nil
        waiters.applied([try validated(Fixtures.userChange("u3", version: 4)), try validated(gone)])
        #expect(try await second.value == EntityVersion(version: 5, deleted: true))
    }

    @Test(arguments: StoreBackend.available) func aVersionAlreadyHeldReturnsAtOnce(backend: StoreBackend) async throws {
        let replica = try await backend.place("waiters-held").replica()
        #expect(try await replica.apply(validated(Fixtures.userChange("u1", version: 3))) == .apply)
        let held = try await VersionWaiters(store: replica).wait(.user, "u1", version: 2, timeout: .seconds(60))
        #expect(held == EntityVersion(version: 3, deleted: false))
    }

    @Test(arguments: StoreBackend.available) func anotherInstancesApplyIsFoundInTheStore(backend: StoreBackend) async throws {
        let place = try await backend.place("waiters-other")
        let replica = try await place.replica()
        let waiters = VersionWaiters(store: replica, recheckInterval: .milliseconds(20))
        let waiting = Task { try await waiters.wait(.group, "g1", version: 1, timeout: .seconds(60)) }
        try await eventually("the wait is registered") { waiters.count == 1 }
        // Applied through a store of its own, as another instance of the group would, and never
        // announced to these waiters.
        let other = try await place.replica()
        #expect(try await other.apply(validated(Fixtures.groupChange("g1", version: 1))) == .apply)
        #expect(try await waiting.value == EntityVersion(version: 1, deleted: false))
    }

    @Test(arguments: StoreBackend.available) func waitsEndAtTheirDeadlineOrWhenCancelled(backend: StoreBackend) async throws {
        let replica = try await backend.place("waiters-end").replica()
        let waiters = VersionWaiters(store: replica, recheckInterval: .seconds(5))
        // A deadline shorter than the recheck interval ends the wait at the deadline.
        let started = ContinuousClock.now
        #expect(try await waiters.wait(.user, "late", version: 1, timeout: .milliseconds(50)) == nil)
        #expect(ContinuousClock.now - started < .seconds(5), "the wait outlived its deadline until the recheck")
        let cancelled = Task { try await waiters.wait(.user, "gone", version: 1, timeout: .seconds(60)) }
        try await eventually("the wait is registered") { waiters.count == 1 }
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        #expect(waiters.count == 0)
    }
}
