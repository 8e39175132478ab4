import EntitySyncCore
import EntitySyncTestSupport
import Foundation
import Testing

/// The relay lease as each store backend keeps it: one relay at a time per store, handed over
/// when its holder releases it or stops renewing it.
@Suite struct RelayLeaseStoreTests {
    /// Two producers on one store file, both started with the default instance name: the second
    /// must not claim while the first one's lease is live (before, both used `producer@<host>`
    /// as the owner and the store took them for one relay).
    /// With owners unique per process, a restarted producer is a new owner: the stopped one
    /// must give the lease up, or every restart would hold relaying for a whole lease.
    @Test(arguments: StoreBackend.available)
    func aStoppedRelayReleasesItsLeaseAndOnlyItsOwn(backend: StoreBackend) async throws {
        let store = try await backend.place("release").source(producer: "p")
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

    @Test(arguments: StoreBackend.available)
    func aSecondOwnerCannotClaimWhileTheFirstLeaseIsLiveEvenWithTheSameInstanceName(backend: StoreBackend) async throws {
        let place = try backend.place("shared-source")
        let name = "producer@\(ProcessInfo.processInfo.hostName)"
        let firstStore = try await place.source(producer: name)
        let secondStore = try await place.source(producer: name)
        for index in 0..<4 {
            _ = try await firstStore.createUser(UserDraft(id: "u\(index)", name: "N", email: "n\(index)@example.com"))
        }
        let configuration = OutboxRelay.Configuration()
        let lease = configuration.lease(publishTimeout: .seconds(30))
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
