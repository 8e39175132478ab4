/// Whether consumer groups' stores hold exactly what the producer's store holds: every entity id
/// with the same version and tombstone. Used by the chaos tests and `entity-sync check`.
public struct ConvergenceReport: Sendable, Equatable {
    /// One entity on which a group and the producer disagree.
    public struct Difference: Sendable, Equatable, CustomStringConvertible {
        public var group: String
        public var kind: EntityKind
        public var id: String
        /// Nil where the store does not hold the entity at all.
        public var producer: EntityVersion?
        public var replica: EntityVersion?

        public var description: String {
            "\(self.group): \(self.kind.rawValue) '\(self.id)' is \(self.replica.map { "\($0)" } ?? "missing")"
                + ", the producer has \(self.producer.map { "\($0)" } ?? "nothing")"
        }
    }

    /// A change a client was told succeeded that a store does not hold (at that version or later).
    public struct MissingChange: Sendable, Equatable, CustomStringConvertible {
        public var store: String
        public var kind: EntityKind
        public var id: String
        public var version: UInt64
        public var held: EntityVersion?

        public var description: String {
            "\(self.store) lacks confirmed \(self.kind.rawValue) '\(self.id)' v\(self.version) (holds \(self.held.map { "\($0)" } ?? "nothing"))"
        }
    }

    /// Per consumer group: what its store counted.
    public struct Group: Sendable, Equatable {
        public var name: String
        public var entities = 0
        public var applied = 0
        public var stale = 0
        public var deadLettered = 0
    }

    /// Change events the producer made: every version of every entity, tombstones included.
    public var eventsProduced: UInt64 = 0
    public var entities = 0
    public var groups: [Group] = []
    public var differences: [Difference] = []
    public var missing: [MissingChange] = []

    public var converged: Bool { self.differences.isEmpty && self.missing.isEmpty }

    public typealias Versions = [EntityKind: [String: EntityVersion]]

    /// Compares each group's versions with the producer's, and checks that every confirmed change
    /// (`confirmed`: the version a successful mutation returned) is held by every store.
    public static func compare(producer: Versions, groups: [(name: String, versions: Versions, statistics: [EntityKind: ReplicaStatistics])],
                               confirmed: [EntityKind: [String: UInt64]] = [:]) -> ConvergenceReport {
        var report = ConvergenceReport()
        for (_, entities) in producer {
            report.entities += entities.count
            report.eventsProduced += entities.values.reduce(0) { $0 + $1.version }
        }
        report.missing += self.missing(in: "producer", versions: producer, confirmed: confirmed)
        for group in groups {
            var summary = Group(name: group.name)
            for statistics in group.statistics.values {
                summary.entities += statistics.entities
                summary.applied += statistics.applied
                summary.stale += statistics.stale
                summary.deadLettered += statistics.deadLettered
            }
            report.groups.append(summary)
            for kind in EntityKind.allCases {
                let source = producer[kind] ?? [:]
                let replica = group.versions[kind] ?? [:]
                for id in Set(source.keys).union(replica.keys).sorted() where source[id] != replica[id] {
                    report.differences.append(Difference(group: group.name, kind: kind, id: id, producer: source[id], replica: replica[id]))
                }
            }
            report.missing += self.missing(in: group.name, versions: group.versions, confirmed: confirmed)
        }
        return report
    }

    private static func missing(in store: String, versions: Versions, confirmed: [EntityKind: [String: UInt64]]) -> [MissingChange] {
        confirmed.sorted { $0.key < $1.key }.flatMap { kind, entities in
            entities.sorted { $0.key < $1.key }.compactMap { id, version -> MissingChange? in
                let held = versions[kind]?[id]
                guard (held?.version ?? 0) < version else { return nil }
                return MissingChange(store: store, kind: kind, id: id, version: version, held: held)
            }
        }
    }
}

extension ConvergenceReport {
    /// Reads the producer's store and each group's store and compares them. Safe while the
    /// services run: both backends let readers in beside the writers.
    public static func check(source: any SourceStore, groups: [(name: String, store: any ReplicaStore)],
                             confirmed: [EntityKind: [String: UInt64]] = [:]) async throws -> ConvergenceReport {
        var producer: Versions = [:]
        for kind in EntityKind.allCases { producer[kind] = try await source.versions(of: kind) }
        var read: [(name: String, versions: Versions, statistics: [EntityKind: ReplicaStatistics])] = []
        for (name, store) in groups {
            var versions: Versions = [:]
            for kind in EntityKind.allCases { versions[kind] = try await store.versions(of: kind) }
            read.append((name, versions, try await store.statistics()))
        }
        return self.compare(producer: producer, groups: read, confirmed: confirmed)
    }
}
