import EntitySyncCore
import Foundation
import Synchronization

/// Samples every group's store while a scenario runs and records any entity whose version went
/// down between two samples: a replica must never regress, whatever arrives late or twice.
final class ReplicaWatch: Sendable {
    private final class Findings: Sendable {
        let list = Mutex<[String]>([])
    }

    private let regressions = Findings()
    private let task: Task<Void, Never>

    init(system: ChaosSystem) async throws {
        let stores = try await system.replicas()
        let regressions = self.regressions
        self.task = Task {
            var last: [String: [EntityKind: [String: UInt64]]] = [:]
            while !Task.isCancelled {
                for (group, store) in stores {
                    for kind in EntityKind.allCases {
                        guard let versions = try? await store.versions(of: kind) else { continue }
                        for (id, held) in versions {
                            if let before = last[group]?[kind]?[id], held.version < before {
                                regressions.list.withLock { $0.append("\(group) \(kind.rawValue) '\(id)' went from v\(before) to v\(held.version)") }
                            }
                            last[group, default: [:]][kind, default: [:]][id] = held.version
                        }
                    }
                }
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    /// Stops sampling; returns every regression seen.
    func finish() async -> [String] {
        self.task.cancel()
        await self.task.value
        return self.regressions.list.withLock { $0 }
    }
}
