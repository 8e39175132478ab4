import AMQPClient
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import GRPCCore
import Testing

/// The reliability scenarios of RELIABILITY.md: the real binary under a steady load of admin API
/// mutations while faults are dealt, each ending with the convergence check (nothing confirmed is
/// lost, every group holds exactly the producer's versions, no replica ever went back).
///
/// Several faults hit the whole broker, so `scripts/test` runs this suite on its own, after the
/// others; `scripts/chaos` runs it larger and writes the table.
@Suite(.serialized, .enabled(if: Broker.isAvailable && FileManager.default.isExecutableFile(atPath: entitySyncBinary),
                             "needs the private broker and the built entity-sync"))
struct ChaosTests {
    let rounds = ChaosSize.current.rounds

    // MARK: 1. Broker restarts

    @Test func brokerStopAppAndStartApp() async throws {
        let rounds = self.rounds
        _ = try await runChaosScenario("restart", title: "Broker stop_app / start_app") { system, load in
            for round in 1...rounds {
                try await waitForProgress(load)
                try Broker.ctl("stop_app")
                // The broker stays down a while so publishes and acks pile up against it.
                try await Task.sleep(for: .seconds(3))
                try Broker.ctl("start_app")
                if round < rounds { try await waitForConnections(system) }
            }
            return FaultLog(description: "\(rounds) × stop_app, 3 s down, start_app")
        }
    }

    @Test(.enabled(if: Broker.startCommand != nil, "needs ENTITY_SYNC_TEST_BROKER_START (scripts/test sets it)"))
    func brokerKilledWithSIGKILLAndStartedAgain() async throws {
        let rounds = self.rounds
        _ = try await runChaosScenario("brokerkill", title: "Broker SIGKILL, started again") { system, load in
            for round in 1...rounds {
                try await waitForProgress(load)
                let pid = try Broker.pid()
                kill(pid, SIGKILL)
                chaosStep("brokerkill", "broker \(pid) killed")
                try await eventually("the broker process is gone") { kill(pid, 0) != 0 }
                chaosStep("brokerkill", "starting the broker again")
                try Broker.start()
                chaosStep("brokerkill", "broker started")
                if round < rounds { try await waitForConnections(system) }
            }
            return FaultLog(description: "\(rounds) × SIGKILL of the broker, then started again")
        }
    }

    // MARK: 2. Connections closed by the broker

    @Test func allConnectionsClosedRepeatedly() async throws {
        let count = 3 * self.rounds
        _ = try await runChaosScenario("closeall", title: "close_all_connections, repeatedly") { system, load in
            for round in 1...count {
                try await waitForProgress(load)
                try Broker.ctl("close_all_connections", "-p", system.host.name, "chaos test")
                if round < count { try await waitForConnections(system) }
            }
            return FaultLog(description: "\(count) × close_all_connections")
        }
    }

    // MARK: 3. A consumer instance killed mid-batch

    @Test func consumerInstanceKilledMidBatchThenRestarted() async throws {
        let rounds = self.rounds
        _ = try await runChaosScenario("consumerkill", title: "Consumer instance SIGKILL mid-batch") { system, load in
            try await killConsumersMidBatch(system, load, rounds: rounds)
        }
    }

    // MARK: 4. The producer killed with events in its outbox

    @Test func producerKilledWithUnconfirmedOutbox() async throws {
        let rounds = self.rounds
        _ = try await runChaosScenario("producerkill", title: "Producer SIGKILL with unconfirmed outbox") { system, load in
            var pending: [Int] = []
            for _ in 1...rounds {
                try await waitForProgress(load)
                // Frozen, the relay cannot confirm what is in flight. Freeze, count the outbox in
                // the store file, and thaw to try again if it happened to be empty.
                let outbox = try await system.source()
                try await eventually("the producer frozen with events in its outbox") {
                    try system.signal("producer", SIGSTOP)
                    if try await outbox.outboxCount() > 0 { return true }
                    try system.signal("producer", SIGCONT)
                    return false
                }
                try await system.kill9("producer")
                pending.append(try await outbox.outboxCount())
                try system.launch("producer")
                try await system.waitServing("producer")
            }
            guard pending.allSatisfy({ $0 > 0 }) else { throw HarnessError("an outbox was empty at the kill: \(pending)") }
            return FaultLog(description: "SIGKILL with \(pending.map(String.init).joined(separator: ", ")) events unconfirmed; restarted")
        }
    }

    // MARK: 5. The broker frozen

    @Test func brokerFrozenLongerThanTwoHeartbeats() async throws {
        let rounds = self.rounds
        let heartbeat = 2
        _ = try await runChaosScenario("frozen", title: "Broker SIGSTOP for 3 heartbeats", heartbeat: heartbeat) { system, load in
            for _ in 1...rounds {
                try await waitForProgress(load)
                let connected = (["producer"] + ChaosSystem.consumers).map { connectedCount(system, $0) }
                let pid = try Broker.pid()
                kill(pid, SIGSTOP)
                try await Task.sleep(for: .seconds(3 * heartbeat))
                kill(pid, SIGCONT)
                // Every service noticed the dead connection and made a new one.
                try await eventually("every service reconnected", timeout: .seconds(60)) {
                    zip(["producer"] + ChaosSystem.consumers, connected).allSatisfy { connectedCount(system, $0) > $1 }
                }
            }
            return FaultLog(description: "\(rounds) × SIGSTOP for \(3 * heartbeat) s (heartbeat \(heartbeat) s)")
        }
    }

    // MARK: 6. A memory alarm

    @Test func memoryAlarmBlocksPublishersWhileTheAPIGoesOn() async throws {
        let rounds = self.rounds
        _ = try await runChaosScenario("alarm", title: "Memory alarm blocks publishing") { system, load in
            var accepted: [String] = []
            for _ in 1...rounds {
                try await waitForProgress(load)
                try Broker.ctl("set_vm_memory_high_watermark", "0.0001")
                do {
                    let before = load.confirmedCount
                    var peak: UInt64 = 0
                    // The API keeps accepting; the events wait in the outbox for the alarm to clear.
                    try await eventually("mutations accepted during the alarm", timeout: .seconds(60)) {
                        peak = max(peak, try await system.outboxPending())
                        return load.confirmedCount >= before + 100 && peak >= 50
                    }
                    // Held a while longer: publishers stay blocked, the outbox keeps growing.
                    try await Task.sleep(for: .seconds(3))
                    peak = max(peak, try await system.outboxPending())
                    accepted.append("\(load.confirmedCount - before) accepted, \(peak) in the outbox")
                } catch {
                    _ = try? Broker.ctl("set_vm_memory_high_watermark", "0.4")
                    throw error
                }
                try Broker.ctl("set_vm_memory_high_watermark", "0.4")
            }
            return FaultLog(description: "\(rounds) × alarm: \(accepted.joined(separator: "; "))")
        }
    }

    // MARK: 7. Poison messages

    @Test func poisonMessagesEndInTheDeadLetterQueuesWithTheirReason() async throws {
        _ = try await runChaosScenario("poison", title: "Poison messages injected") { system, load in
            try await waitForProgress(load)
            let connection = try await system.host.connect("poison")
            var injected = 0
            for kind in EntityKind.allCases {
                for message in try poisonMessages(kind) {
                    try await connection.publish(message, exchange: SyncTopology.exchange(for: kind))
                    injected += 1
                }
            }
            await connection.close()
            // Every group's queues got every one; each must land in the DLQ with its reason.
            for (instance, group) in [("user-rpc-1", "consumer_user_rpc"), ("org-rpc-1", "consumer_org_rpc")] {
                var reasons: [String] = []
                try await eventually("\(group) dead-lettered all \(injected)", timeout: .seconds(60)) {
                    reasons = try await system.withClient(instance) { client in
                        var request = Entitysync_V1_ListDeadLettersRequest()
                        request.limit = 100
                        return try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(
                            request, metadata: system.authorized).deadLetters.map(\.reason)
                    }
                    return reasons.count == injected
                }
                for expected in ["unsupported-content-type", "undecodable", "version must be at least 1", "unknown entity type 9"] {
                    guard reasons.filter({ $0.contains(expected) }).count == EntityKind.allCases.count else {
                        throw HarnessError("\(group): expected one '\(expected)' per queue, got \(reasons)")
                    }
                }
            }
            return FaultLog(description: "\(injected) poison messages (4 kinds × 2 exchanges), fanned out to 2 groups",
                            expectedDeadLetters: injected * ChaosSystem.groups.count)
        }
    }

    // MARK: 8. Duplicates and stale versions

    @Test func duplicatesAndStaleVersionsNeverRegressAReplica() async throws {
        var injected = 0
        var staleBefore: [String: Int] = [:]
        let (_, report) = try await runChaosScenario("stale", title: "Duplicates and stale versions injected") { system, load in
            try await waitForProgress(load)
            staleBefore = Dictionary(uniqueKeysWithValues: try await system.check(confirmed: [:]).groups.map { ($0.name, $0.stale) })
            let source = try await system.source()
            let connection = try await system.host.connect("stale")
            for kind in EntityKind.allCases {
                for change in try await source.snapshot(of: kind, after: nil, limit: 30) {
                    var older = change
                    older.version = change.version - 1
                    older.messageID = UUID().uuidString
                    older.operation = .upsert
                    if kind == .user {
                        var user = Entitysync_V1_User()
                        user.id = change.entityID
                        user.name = "STALE"
                        older.user = user
                    } else {
                        var group = Entitysync_V1_Group()
                        group.id = change.entityID
                        group.name = "STALE"
                        older.group = group
                    }
                    // Straight into every group's queue: the same event twice, and an older one.
                    for (group, _) in ChaosSystem.groups {
                        let queue = SyncTopology.queue(for: kind, group: group)
                        try await connection.publish(try ChangeCodec.message(for: change), exchange: "", routingKey: queue)
                        if older.version > 0 {
                            try await connection.publish(try ChangeCodec.message(for: older), exchange: "", routingKey: queue)
                        }
                    }
                    injected += older.version > 0 ? 2 : 1
                }
            }
            await connection.close()
            return FaultLog(description: "\(injected) duplicates and older versions into each group's queues")
        }
        // Of each injected event and the real one of the same version, one was stale.
        for group in report.groups {
            #expect(group.stale - staleBefore[group.name, default: 0] >= injected, "\(group.name): \(group)")
        }
    }
}

/// Waits until the load confirmed another batch of mutations, so each fault lands mid-stream.
func waitForProgress(_ load: LoadGenerator) async throws {
    let before = load.confirmedCount
    try await eventually("mutations under way", timeout: .seconds(120)) { load.confirmedCount >= before + ChaosSize.current.warmup / 2 }
}

/// Waits until all five services have a connection to the vhost again.
func waitForConnections(_ system: ChaosSystem) async throws {
    try await eventually("every service reconnected", timeout: .seconds(60)) {
        let listing = try system.host.ctl("list_connections", "vhost", "state")
        let open = listing.split(separator: "\n").filter { $0.hasPrefix(system.host.name + "\t") && $0.hasSuffix("running") }
        return open.count >= system.instances.count
    }
}

/// How often `instance` logged a successful broker connection.
func connectedCount(_ system: ChaosSystem, _ instance: String) -> Int {
    system.log(instance).components(separatedBy: "amqp connected").count - 1
}

/// Unacknowledged deliveries on the queue named `queuePrefix`.
func unacknowledged(_ system: ChaosSystem, queuePrefix: String) throws -> Int {
    let listing = try system.host.ctl("list_queues", "-p", system.host.name, "name", "messages_unacknowledged")
    var total = 0
    for line in listing.split(separator: "\n") {
        let columns = line.split(separator: "\t").map(String.init)
        if columns.count == 2, columns[0] == queuePrefix, let count = Int(columns[1]) { total += count }
    }
    return total
}

/// One of each kind of poison: a content type no consumer reads, bytes that are no protobuf,
/// JSON that lacks the version, and an entity type that does not exist.
func poisonMessages(_ kind: EntityKind) throws -> [OutgoingMessage] {
    var unknownType = EntityChange()
    unknownType.entityType = .UNRECOGNIZED(9)
    unknownType.entityID = "poison-type"
    unknownType.version = 1
    unknownType.operation = .delete
    let wrongContentType = OutgoingMessage(body: Array(#"{"entityId":"poison-text"}"#.utf8), contentType: "text/plain",
                                           messageID: "poison-content-type")
    let garbage = OutgoingMessage(body: [0xFF, 0xFE, 0x00, 0x13, 0x37], contentType: ChangeCodec.protobufContentType,
                                  messageID: "poison-garbage")
    let json = #"{"entityType":"ENTITY_TYPE_"# + kind.rawValue.uppercased() + #"","entityId":"poison-json"}"#
    let missingVersion = OutgoingMessage(body: Array(json.utf8), contentType: ChangeCodec.jsonContentType, messageID: "poison-json")
    return [wrongContentType, garbage, missingVersion, try ChangeCodec.message(for: unknownType)]
}

/// Freezes a consumer instance holding deliveries, SIGKILLs it (mid-batch for certain), checks
/// that its partner goes on alone, and starts it again; `rounds` times, alternating groups.
func killConsumersMidBatch(_ system: ChaosSystem, _ load: LoadGenerator, rounds: Int) async throws -> FaultLog {
    var held: [String] = []
    for round in 1...rounds {
        try await waitForProgress(load)
        let (victim, survivor, prefix) = round % 2 == 1
            ? ("user-rpc-1", "user-rpc-2", "exchange_user_consumer_user_rpc")
            : ("org-rpc-2", "org-rpc-1", "exchange_user_consumer_org_rpc")
        // Frozen, the instance keeps its prefetched deliveries unacknowledged: killed now,
        // it dies in the middle of a batch for certain.
        try system.signal(victim, SIGSTOP)
        var unacked = 0
        try await eventually("deliveries held by the frozen \(victim)") {
            unacked = try unacknowledged(system, queuePrefix: prefix)
            return unacked > 0
        }
        try await system.kill9(victim)
        held.append("\(victim) holding \(unacked)")
        // The other instance carries on alone: a change made now reaches the store.
        let probe = try await load.probe()
        let store = try await system.replica(ChaosSystem.service(of: survivor))
        try await eventually("\(survivor) applies changes alone", timeout: .seconds(60)) {
            (try await store.version(of: .user, id: LoadGenerator.probeUser)?.version ?? 0) >= probe.user
        }
        try system.launch(victim)
        try await system.waitServing(victim)
    }
    return FaultLog(description: "SIGKILL of \(held.joined(separator: ", ")) unacked deliveries; restarted")
}
