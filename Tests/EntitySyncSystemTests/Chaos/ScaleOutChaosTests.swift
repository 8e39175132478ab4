import EntitySyncCore
import EntitySyncPostgres
import EntitySyncTestSupport
import Foundation
import Testing

/// The scale-out scenarios of RELIABILITY.md: the same method (the built binary under load, a
/// fault, recovery measured, every store compared), with the services on a 3-node RabbitMQ
/// cluster or on PostgreSQL. `scripts/test` runs them after the single-broker scenarios.
@Suite(.serialized, .enabled(if: FileManager.default.isExecutableFile(atPath: entitySyncBinary), "needs the built entity-sync"))
struct ScaleOutChaosTests {
    let rounds = ChaosSize.current.rounds

    // MARK: A RabbitMQ cluster

    /// The node leading the user-rpc group's quorum queue is SIGKILLed: the queue elects a new
    /// leader, clients of the dead node move to the next URL, the node comes back and rejoins.
    @Test(.enabled(if: TestCluster.isAvailable, "needs the test cluster (scripts/test starts one)"))
    func quorumLeaderNodeKilledAndRestarted() async throws {
        let rounds = self.rounds
        _ = try await runChaosScenario("leaderkill", title: "Cluster: quorum leader node SIGKILL, restarted",
                                       setup: ChaosSetup(onCluster: true)) { system, load in
            var killed: [Int] = []
            for _ in 1...rounds {
                try await waitForProgress(load)
                let node = try quorumLeader(system, queue: SyncTopology.queue(for: .user, group: "consumer_user_rpc"))
                try TestCluster.kill(node: node)
                killed.append(node)
                chaosStep("leaderkill", "node \(node) killed")
                try await waitForProgress(load)
                try TestCluster.start(node: node)
                chaosStep("leaderkill", "node \(node) started again")
                try await waitForConnections(system)
            }
            return FaultLog(description: "SIGKILL of the leading node (\(killed.map { "node \($0)" }.joined(separator: ", "))); restarted")
        }
    }

    /// Two of three nodes stopped: no majority, so nothing is confirmed and the outbox holds
    /// every change; the nodes come back and the outbox drains.
    @Test(.enabled(if: TestCluster.isAvailable, "needs the test cluster (scripts/test starts one)"))
    func twoOfThreeNodesStoppedThenStarted() async throws {
        _ = try await runChaosScenario("nomajority", title: "Cluster: 2 of 3 nodes stopped (no majority), started again",
                                       setup: ChaosSetup(onCluster: true)) { system, load in
            try await waitForProgress(load)
            var peak: UInt64 = 0
            do {
                try TestCluster.stop(node: 2)
                try TestCluster.stop(node: 3)
                chaosStep("nomajority", "nodes 2 and 3 stopped")
                // Mutations go on; with no majority their events wait in the outbox.
                let before = load.confirmedCount
                try await eventually("mutations made without a majority", timeout: .seconds(60)) {
                    load.confirmedCount >= before + ChaosSize.current.warmup / 2
                }
                peak = (try? await system.outboxPending()) ?? 0
            } catch {
                try? TestCluster.start(node: 2)
                try? TestCluster.start(node: 3)
                throw error
            }
            try TestCluster.start(node: 2)
            try TestCluster.start(node: 3)
            chaosStep("nomajority", "nodes 2 and 3 started; outbox held \(peak)")
            try await waitForConnections(system)
            return FaultLog(description: "nodes 2 and 3 stopped while \(ChaosSize.current.warmup / 2)+ mutations were made "
                            + "(outbox held \(peak)); started again")
        }
    }

    // MARK: PostgreSQL

    /// The database every service uses stops under load and starts again: consumers pause
    /// (nothing dead-lettered), the producer answers UNAVAILABLE, and all resume.
    @Test(.enabled(if: TestPostgres.isControllable && Broker.isAvailable, "needs the test PostgreSQL and broker"))
    func postgresRestartedUnderLoad() async throws {
        let rounds = self.rounds
        _ = try await runChaosScenario("pgrestart", title: "PostgreSQL stopped 3 s under load, started again",
                                       setup: ChaosSetup(storage: .postgres)) { system, load in
            for _ in 1...rounds {
                try await waitForProgress(load)
                try TestPostgres.stop()
                chaosStep("pgrestart", "PostgreSQL stopped")
                // The failed calls a stopped database causes, not a sleep for its own sake: the
                // load must meet the outage.
                let failedBefore = load.failedCount
                do {
                    try await eventually("the load meets the outage", timeout: .seconds(30)) { load.failedCount > failedBefore }
                    try await Task.sleep(for: .seconds(3))
                } catch {
                    try? TestPostgres.start()
                    throw error
                }
                try TestPostgres.start()
                chaosStep("pgrestart", "PostgreSQL started")
            }
            return FaultLog(description: "\(rounds) × PostgreSQL stopped (fast shutdown) 3 s, started; both groups and the producer on it")
        }
    }

    /// Two producers on one PostgreSQL source store, both serving the admin API; the one holding
    /// the relay lease is SIGKILLed and the other takes the outbox over.
    @Test(.enabled(if: StoreBackend.postgresURL != nil && Broker.isAvailable, "needs the test PostgreSQL and broker"))
    func relayingProducerKilledWhileASecondRuns() async throws {
        _ = try await runChaosScenario("relaykill", title: "Relaying producer SIGKILL, a second producer running",
                                       setup: ChaosSetup(storage: .postgres, producers: 2)) { system, load in
            try await waitForProgress(load)
            let url = try PostgresURL(system.storeLocation("producer"))
            let holder = try await PostgresAdmin.execute(url, "SELECT owner FROM relay_lease WHERE id = 1")
            let victim = holder.contains("-producer-2 ") ? "producer-2" : "producer"
            let survivor = victim == "producer" ? "producer-2" : "producer"
            guard holder.contains("-\(victim) ") else { throw HarnessError("no producer holds the relay lease: '\(holder)'") }
            try await system.kill9(victim)
            let killedAt = ContinuousClock.now
            chaosStep("relaykill", "\(victim) (the relay) killed")
            try await eventually("\(survivor) relays", timeout: .seconds(60)) {
                try await PostgresAdmin.execute(url, "SELECT owner FROM relay_lease WHERE id = 1").contains("-\(survivor) ")
            }
            let takeover = ContinuousClock.now - killedAt
            chaosStep("relaykill", "\(survivor) took the relay over after \(takeover)")
            try system.launch(victim)
            try await system.waitServing(victim)
            return FaultLog(description: "SIGKILL of the relaying \(victim); \(survivor) relayed after "
                            + "\(takeover.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 1)))); restarted")
        }
    }

    /// user-rpc and org-rpc instances that share nothing but PostgreSQL (no common folder), one
    /// SIGKILLed while it holds deliveries.
    @Test(.enabled(if: StoreBackend.postgresURL != nil && Broker.isAvailable, "needs the test PostgreSQL and broker"))
    func consumerOnPostgresKilledMidBatch() async throws {
        let rounds = self.rounds
        _ = try await runChaosScenario("pgconsumerkill", title: "Consumer SIGKILL mid-batch, instances sharing only PostgreSQL",
                                       setup: ChaosSetup(storage: .postgres)) { system, load in
            try await killConsumersMidBatch(system, load, rounds: rounds)
        }
    }
}

/// The cluster node (1-3) leading `queue` in the system's vhost.
func quorumLeader(_ system: ChaosSystem, queue: String) throws -> Int {
    let listing = try system.host.ctl("list_queues", "-p", system.host.name, "name", "leader")
    for line in listing.split(separator: "\n") {
        let columns = line.split(separator: "\t").map(String.init)
        if columns.count == 2, columns[0] == queue { return try TestCluster.node(named: columns[1]) }
    }
    throw HarnessError("no leader listed for \(queue): \(listing)")
}
