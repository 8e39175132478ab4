import EntitySyncCore

extension ConvergenceReport {
    /// Reads the producer's store and each group's store and compares them. Safe while the
    /// services run: SQLite in WAL mode lets readers in beside the writers.
    public static func check(producerStore: String, groupStores: [(name: String, path: String)],
                             confirmed: [EntityKind: [String: UInt64]] = [:]) async throws -> ConvergenceReport {
        let source = try SQLiteSourceStore(path: producerStore, producer: "convergence-check")
        var producer: Versions = [:]
        for kind in EntityKind.allCases { producer[kind] = try await source.versions(of: kind) }
        var groups: [(name: String, versions: Versions, statistics: [EntityKind: ReplicaStatistics])] = []
        for (name, path) in groupStores {
            let replica = try SQLiteReplicaStore(path: path)
            var versions: Versions = [:]
            for kind in EntityKind.allCases { versions[kind] = try await replica.versions(of: kind) }
            groups.append((name, versions, try await replica.statistics()))
        }
        return self.compare(producer: producer, groups: groups, confirmed: confirmed)
    }
}
