import EntitySyncCore
import EntitySyncTestSupport
import Foundation

/// How big a chaos run is: `ENTITY_SYNC_CHAOS_SCALE` (default 1, what CI runs) multiplies the
/// load's workers, the mutations between faults, and how often each fault is repeated.
struct ChaosSize {
    var scale: Int
    var workers: Int { min(4 * self.scale, 16) }
    /// Mutations confirmed before the first fault and between two faults.
    var warmup: Int { 100 * self.scale }
    var rounds: Int { self.scale }

    static let current = ChaosSize(scale: max(1, Int(ProcessInfo.processInfo.environment["ENTITY_SYNC_CHAOS_SCALE"] ?? "") ?? 1))
}

/// One row of RELIABILITY.md's table.
struct ChaosResult {
    var scenario: String
    var confirmed: Int
    var events: UInt64
    var faults: String
    var lost: Int
    var differing: Int
    var regressions: Int
    var deadLettered: Int
    var recovery: Duration

    var markdownRow: String {
        let seconds = Double(self.recovery.components.seconds) + Double(self.recovery.components.attoseconds) / 1e18
        return "| \(self.scenario) | \(self.confirmed) | \(self.events) | \(self.faults) | \(self.lost) | \(self.differing) "
            + "| \(self.regressions) | \(self.deadLettered) | \(String(format: "%.1f", seconds)) |"
    }

    /// Prints the row, and appends it to `ENTITY_SYNC_CHAOS_REPORT` when set (scripts/chaos).
    func publish() {
        print("chaos result: \(self.markdownRow)")
        guard let path = ProcessInfo.processInfo.environment["ENTITY_SYNC_CHAOS_REPORT"], !path.isEmpty else { return }
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        if let handle = FileHandle(forWritingAtPath: path) {
            handle.seekToEndOfFile()
            handle.write(Data((self.markdownRow + "\n").utf8))
            try? handle.close()
        }
    }
}

/// One line of progress in the test output, so a stuck scenario shows where it stands.
func chaosStep(_ scenario: String, _ text: String) {
    // stderr: unbuffered, so a scenario killed by a timeout still shows its last step.
    let line = "chaos [\(scenario)] \(Date().formatted(.iso8601.time(includingFractionalSeconds: true))) \(text)\n"
    FileHandle.standardError.write(Data(line.utf8))
}

/// What a scenario's fault did, in words for the table.
struct FaultLog {
    var description: String
    var expectedDeadLetters = 0
}

/// Runs one chaos scenario: the system under load, `fault` dealt (it returns what it did), then
/// the recovery measured and the stores compared.
///
/// Recovery time: from the fault's end until a change made at that moment (the probe, one user
/// and one group) is held by every group. Queues are FIFO, so by then every group has also worked
/// off the backlog the fault left.
func runChaosScenario(_ name: String, title: String, heartbeat: Int = 10, setup: ChaosSetup = ChaosSetup(),
                      fault: (ChaosSystem, LoadGenerator) async throws -> FaultLog) async throws -> (ChaosResult, ConvergenceReport) {
    let size = ChaosSize.current
    let system = try await ChaosSystem.start(name, heartbeat: heartbeat, setup: setup)
    do {
        let load = LoadGenerator(system: system, workers: size.workers)
        try await load.start()
        let watch = try await ReplicaWatch(system: system)
        try await eventually("load under way", timeout: .seconds(60)) { load.confirmedCount >= size.warmup }

        chaosStep(name, "load under way; dealing the fault")
        let log = try await fault(system, load)
        let faultEnd = ContinuousClock.now
        chaosStep(name, "fault over: \(log.description)")
        let probe = try await load.probe()
        chaosStep(name, "probe made: user v\(probe.user), group v\(probe.group)")
        let stores = try await system.replicas()
        do {
            try await eventually("every group holds the probe made when the fault ended", timeout: .seconds(180)) {
                for (_, store) in stores {
                    let user = try await store.version(of: .user, id: LoadGenerator.probeUser)?.version ?? 0
                    let group = try await store.version(of: .group, id: LoadGenerator.probeGroup)?.version ?? 0
                    if user < probe.user || group < probe.group { return false }
                }
                return true
            }
        } catch {
            throw HarnessError("\(error)\n\(system.logTails())")
        }
        let recovery = ContinuousClock.now - faultEnd
        chaosStep(name, "recovered after \(recovery)")

        let resumed = load.confirmedCount
        try await eventually("mutations go on after the fault") { load.confirmedCount >= resumed + size.warmup / 2 }
        try await load.stop()
        chaosStep(name, "load stopped; waiting for convergence")
        let report = try await system.waitConverged(confirmed: load.confirmed)
        let regressions = await watch.finish()
        let stopFailures = try await system.stop()

        let result = ChaosResult(
            scenario: title, confirmed: load.confirmedCount, events: report.eventsProduced, faults: log.description,
            lost: report.missing.count, differing: Set(report.differences.map { "\($0.kind):\($0.id)" }).count,
            regressions: regressions.count, deadLettered: report.groups.reduce(0) { $0 + $1.deadLettered },
            recovery: recovery)
        result.publish()
        let detail = "\(report.missing.prefix(5)) \(report.differences.prefix(5)) \(regressions.prefix(5))\n\(system.logTails())"
        guard report.converged, regressions.isEmpty, stopFailures.isEmpty, result.deadLettered == log.expectedDeadLetters else {
            throw HarnessError("""
                \(title): lost \(result.lost), differing \(result.differing), regressions \(result.regressions), \
                dead-lettered \(result.deadLettered) (expected \(log.expectedDeadLetters)), stop: \(stopFailures)
                \(detail)
                """)
        }
        system.tearDown()
        return (result, report)
    } catch {
        system.tearDown()
        throw error
    }
}
