import EntitySyncCore
import Logging

extension ConvergenceReport {
    /// Opens the producer's store and each group's store where `--db` put them and compares them.
    public static func check(producerStore: StoreLocation, groupStores: [(name: String, location: StoreLocation)],
                             confirmed: [EntityKind: [String: UInt64]] = [:],
                             logger: Logger = Logger(label: "entitysync.check")) async throws -> ConvergenceReport {
        let source = try await producerStore.openSource(producer: "convergence-check", logger: logger)
        var groups: [(name: String, store: any ReplicaStore)] = []
        for (name, location) in groupStores {
            groups.append((name, try await location.openReplica(group: name, logger: logger)))
        }
        return try await self.check(source: source, groups: groups, confirmed: confirmed)
    }
}
