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
        } catch {
            // validate throws only SyncError (typed throws).
            #expect(error.code == .configuration)
            #expect(error.message.contains("publish timeout"))
        }
        configuration.lease = .seconds(45)
        #expect(throws: Never.self) { try configuration.validate(publishTimeout: Self.servicePublishTimeout) }
    }

    @Test func otherInvalidSettingsAreRejected() {
        var configuration = OutboxRelay.Configuration()
        configuration.batchSize = 0
        #expect(throws: SyncError.self) { try configuration.validate(publishTimeout: Self.servicePublishTimeout) }

        configuration = OutboxRelay.Configuration()
        configuration.pipelineDepth = 0
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
}
