import EntitySyncCore
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import Testing

/// The relay lease: it must outlive every publish it covers, and two producers on one store
/// must hold it under different names even when they were started with the same one.
@Suite struct OutboxRelayLeaseTests {
    /// AMQPConfiguration's default publish timeout (what every service connects with).
    static let servicePublishTimeout: Duration = .seconds(30)

    @Test(arguments: [Duration.milliseconds(200), .seconds(1), .seconds(5), .seconds(30), .seconds(120), .seconds(600)])
    func theDerivedLeaseOutlivesThePublishTimeout(publishTimeout: Duration) throws {
        let configuration = OutboxRelay.Configuration()
        let lease = configuration.lease(publishTimeout: publishTimeout)
        #expect(lease > publishTimeout)
        #expect(lease - publishTimeout >= configuration.leaseMargin)
        #expect(configuration.leaseRenewal(publishTimeout: publishTimeout) < lease)
        try configuration.validate(publishTimeout: publishTimeout)
    }

    /// The defect: the lease was a fixed 15 s while a publish may wait 30 s for its confirm.
    @Test func aLeaseNoLongerThanThePublishTimeoutIsRejected() {
        var configuration = OutboxRelay.Configuration()
        configuration.lease = .seconds(15)
        #expect(throws: SyncError.self) { try configuration.validate(publishTimeout: Self.servicePublishTimeout) }
        configuration.lease = Self.servicePublishTimeout
        #expect(throws: SyncError.self) { try configuration.validate(publishTimeout: Self.servicePublishTimeout) }
        do {
            try configuration.validate(publishTimeout: Self.servicePublishTimeout)
            Issue.record("a lease equal to the publish timeout was accepted")
        } catch let error as SyncError {
            #expect(error.code == .configuration)
            #expect(error.message.contains("publish timeout"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
        configuration.lease = .seconds(45)
        #expect(throws: Never.self) { try configuration.validate(publishTimeout: Self.servicePublishTimeout) }
    }

    @Test func otherInvalidSettingsAreRejected() {
        var configuration = OutboxRelay.Configuration()
        configuration.batchSize = 0
        #expect(throws: SyncError.self) { try configuration.validate(publishTimeout: Self.servicePublishTimeout) }

        configuration = OutboxRelay.Configuration()
        configuration.leaseMargin = .zero
        #expect(throws: SyncError.self) { try configuration.validate(publishTimeout: Self.servicePublishTimeout) }

        // An idle relay renews only at each idle check: one that slow would let its lease lapse.
        configuration = OutboxRelay.Configuration()
        configuration.idleCheck = .seconds(20)
        #expect(throws: SyncError.self) { try configuration.validate(publishTimeout: Self.servicePublishTimeout) }
    }

    @Test func ownersAreUniqueAndKeepTheInstanceName() {
        let name = "producer@\(ProcessInfo.processInfo.hostName)"
        let owners = (0..<100).map { _ in OutboxRelay.uniqueOwner(instanceName: name) }
        #expect(Set(owners).count == owners.count)
        for owner in owners {
            #expect(owner.hasPrefix(name))
            #expect(owner.contains("pid \(ProcessInfo.processInfo.processIdentifier)"))
        }
    }

    /// Two producers on one store file, both started with the default instance name: the second
    /// must not claim while the first one's lease is live (before, both used `producer@<host>`
    /// as the owner and the store took them for one relay).
    /// With owners unique per process, a restarted producer is a new owner: the stopped one
    /// must give the lease up, or every restart would hold relaying for a whole lease.
    @Test func aStoppedRelayReleasesItsLeaseAndOnlyItsOwn() async throws {
        let store = try SQLiteSourceStore(path: Fixtures.temporaryDatabasePath("release"), producer: "p")
        _ = try await store.createUser(UserDraft(id: "u0", name: "N", email: "n0@example.com"))
        let lease = Duration.seconds(600)
        let old = OutboxRelay.uniqueOwner(instanceName: "p")
        let restarted = OutboxRelay.uniqueOwner(instanceName: "p")
        #expect(try await store.claimOutbox(owner: old, lease: lease, limit: 10).count == 1)
        #expect(try await store.claimOutbox(owner: restarted, lease: lease, limit: 10).isEmpty)
        // Another owner's release leaves the lease alone.
        try await store.releaseOutboxLease(owner: restarted)
        #expect(try await store.claimOutbox(owner: restarted, lease: lease, limit: 10).isEmpty)
        try await store.releaseOutboxLease(owner: old)
        #expect(try await store.claimOutbox(owner: restarted, lease: lease, limit: 10).count == 1)
    }

    @Test func aSecondOwnerCannotClaimWhileTheFirstLeaseIsLiveEvenWithTheSameInstanceName() async throws {
        let path = Fixtures.temporaryDatabasePath("shared-source")
        let name = "producer@\(ProcessInfo.processInfo.hostName)"
        let firstStore = try SQLiteSourceStore(path: path, producer: name)
        let secondStore = try SQLiteSourceStore(path: path, producer: name)
        for index in 0..<4 {
            _ = try await firstStore.createUser(UserDraft(id: "u\(index)", name: "N", email: "n\(index)@example.com"))
        }
        let configuration = OutboxRelay.Configuration()
        let lease = configuration.lease(publishTimeout: Self.servicePublishTimeout)
        let first = OutboxRelay.uniqueOwner(instanceName: name)
        let second = OutboxRelay.uniqueOwner(instanceName: name)

        let claimed = try await firstStore.claimOutbox(owner: first, lease: lease, limit: 2)
        #expect(claimed.map(\.entityID) == ["u0", "u1"])
        #expect(try await secondStore.claimOutbox(owner: second, lease: lease, limit: 10).isEmpty)
        // A renewal (limit 0, as the relay renews during a batch) keeps it the first's.
        #expect(try await firstStore.claimOutbox(owner: first, lease: lease, limit: 0).isEmpty)
        #expect(try await secondStore.claimOutbox(owner: second, lease: lease, limit: 10).isEmpty)
        try await firstStore.removeOutbox(claimed.map(\.sequence))
        #expect(try await firstStore.claimOutbox(owner: first, lease: lease, limit: 10).map(\.entityID) == ["u2", "u3"])
        #expect(try await secondStore.claimOutbox(owner: second, lease: lease, limit: 10).isEmpty)

        // What the unique names prevent: one owner string is one relay to the store.
        #expect(try await secondStore.claimOutbox(owner: first, lease: lease, limit: 10).count == 2)

        // Once the first relay stops renewing and its lease lapses, the second takes over.
        _ = try await firstStore.claimOutbox(owner: first, lease: .milliseconds(20), limit: 0)
        try await Task.sleep(for: .milliseconds(60))
        #expect(try await secondStore.claimOutbox(owner: second, lease: lease, limit: 10).map(\.entityID) == ["u2", "u3"])
        #expect(try await firstStore.claimOutbox(owner: first, lease: lease, limit: 10).isEmpty)
    }
}
