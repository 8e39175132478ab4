import EntitySyncCore
import Testing

@Suite struct ConvergenceTests {
    static func versions(_ users: [String: EntityVersion], _ groups: [String: EntityVersion] = [:]) -> ConvergenceReport.Versions {
        [.user: users, .group: groups]
    }

    @Test func identicalStoresConvergeAndCountEveryVersionAsAnEvent() {
        let producer = Self.versions(["a": EntityVersion(version: 3, deleted: false), "b": EntityVersion(version: 2, deleted: true)],
                                     ["g": EntityVersion(version: 4, deleted: false)])
        var statistics = ReplicaStatistics()
        statistics.applied = 7
        statistics.stale = 2
        statistics.entities = 2
        let report = ConvergenceReport.compare(producer: producer, groups: [("user-rpc", producer, [.user: statistics])],
                                               confirmed: [.user: ["a": 3, "b": 2], .group: ["g": 1]])
        #expect(report.converged)
        #expect(report.eventsProduced == 9)
        #expect(report.entities == 3)
        #expect(report.groups.map(\.name) == ["user-rpc"])
        #expect(report.groups.first.map { [$0.entities, $0.applied, $0.stale, $0.deadLettered] } == [2, 7, 2, 0])
    }

    @Test func olderMissingExtraAndResurrectedEntitiesAreEachADifference() {
        let producer = Self.versions(["old": EntityVersion(version: 3, deleted: false), "gone": EntityVersion(version: 1, deleted: false),
                                      "dead": EntityVersion(version: 2, deleted: true)])
        let replica = Self.versions(["old": EntityVersion(version: 2, deleted: false), "extra": EntityVersion(version: 1, deleted: false),
                                     "dead": EntityVersion(version: 2, deleted: false)])
        let report = ConvergenceReport.compare(producer: producer, groups: [("org-rpc", replica, [:])])
        #expect(!report.converged)
        #expect(report.differences.map(\.id) == ["dead", "extra", "gone", "old"])
        #expect(report.differences.first { $0.id == "gone" }?.replica == nil)
        #expect(report.differences.first { $0.id == "old" }?.description == "org-rpc: user 'old' is v2, the producer has v3")
    }

    @Test func aConfirmedChangeMissingFromAStoreFailsTheCheck() {
        let producer = Self.versions(["a": EntityVersion(version: 2, deleted: false)])
        // The producer lost a confirmed v3 (and the replica agrees with it): still not converged.
        let report = ConvergenceReport.compare(producer: producer, groups: [("user-rpc", producer, [:])], confirmed: [.user: ["a": 3]])
        #expect(!report.converged)
        #expect(report.differences.isEmpty)
        #expect(report.missing.map(\.store) == ["producer", "user-rpc"])
    }
}
