import ArgumentParser
import EntitySyncCore
import EntitySyncServices
import Foundation

struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Compare the producer's store with each consumer group's store: every id, version and tombstone must match.",
        discussion: """
            Run it once the queues are drained (or with --wait while they drain). It reports events \
            produced, and per group entities, applied, stale and dead-lettered events, and every \
            entity that differs. The exit status is 1 if anything differs.
            """)
    @Option(help: "The producer's store: a SQLite file or a postgres:// URL.") var producerDB = "data/producer.sqlite"
    @Option(name: .customLong("group"), help: "A consumer group's store as name=path or name=postgres://… (repeatable; default: user-rpc and org-rpc under data/).")
    var groups: [String] = []
    @Option(help: "Seconds to keep checking until the stores agree.") var wait: Double = 0
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let stores = try self.groups.isEmpty
            ? [("user-rpc", "data/user-rpc.sqlite"), ("org-rpc", "data/org-rpc.sqlite")]
            : self.groups.map { pair -> (String, String) in
                let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                    throw ValidationError("--group takes name=path, not '\(pair)'")
                }
                return (parts[0], parts[1])
            }
        let producer = try StoreLocation(self.producerDB)
        // A service's name stands for its consumer group, whose PostgreSQL schema is named after it.
        let groups = try stores.map { name, store in
            (ConsumerService.Kind(rawValue: name)?.group ?? name, try StoreLocation(store))
        }
        for case .sqlite(let path) in [producer] + groups.map(\.1) where !FileManager.default.fileExists(atPath: path) {
            throw ValidationError("no store at \(path)")
        }
        let deadline = ContinuousClock.now + .milliseconds(Int64(max(0, self.wait) * 1000))
        var report = try await ConvergenceReport.check(producerStore: producer, groupStores: groups)
        while !report.converged && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(250))
            report = try await ConvergenceReport.check(producerStore: producer, groupStores: groups)
        }
        if self.json {
            let object: [String: Any] = [
                "converged": report.converged, "eventsProduced": report.eventsProduced, "entities": report.entities,
                "groups": report.groups.map { ["name": $0.name, "entities": $0.entities, "applied": $0.applied,
                                               "stale": $0.stale, "deadLettered": $0.deadLettered] as [String: Any] },
                "differences": report.differences.map(\.description),
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print("producer: \(report.entities) entities, \(report.eventsProduced) events produced")
            print(Table.render(header: ["group", "entities", "applied", "stale", "dead-lettered", "differing"], rows: report.groups.map { group in
                [group.name, "\(group.entities)", "\(group.applied)", "\(group.stale)", "\(group.deadLettered)",
                 "\(report.differences.filter { $0.group == group.name }.count)"]
            }))
            for difference in report.differences.prefix(50) { print(difference) }
            if report.differences.count > 50 { print("… and \(report.differences.count - 50) more") }
            print(report.converged ? "converged" : "NOT converged")
        }
        if !report.converged { throw ExitCode(1) }
    }
}
