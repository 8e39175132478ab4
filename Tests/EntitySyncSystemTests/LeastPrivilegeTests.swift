import AMQPClient
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import GRPCCore
import Testing

/// One broker user per service with exactly the permissions `entity-sync topology permissions`
/// prints: the system works end to end, a consumer's credentials can neither publish to an
/// entity exchange nor read another group's queue, and too narrow a grant is a clear error.
@Suite(.serialized, .enabled(if: Broker.isAvailable && FileManager.default.isExecutableFile(atPath: entitySyncBinary),
                             "needs the private broker and the built entity-sync"))
struct LeastPrivilegeTests {
    @Test func oneUserPerServiceWithOnlyWhatItNeeds() async throws {
        let host = try TestVirtualHost("leastpriv")
        let base = try AMQPURL(Broker.url ?? "")
        let topology = SyncTopology()
        let suffix = String(host.name.suffix(8))
        var users: [String: String] = [:]  // service → user
        var urls: [String: String] = [:]
        for (service, group) in [("producer", nil), ("user-rpc", "consumer_user_rpc"), ("org-rpc", "consumer_org_rpc")] as [(String, String?)] {
            let user = "lp_\(service.replacingOccurrences(of: "-", with: "_"))_\(suffix)"
            try Broker.ctl("add_user", user, "secret-\(service)")
            let permissions = topology.permissions(forGroup: group)
            try Broker.ctl("set_permissions", "-p", host.name, user, permissions.configure, permissions.write, permissions.read)
            users[service] = user
            urls[service] = "amqp://\(user):secret-\(service)@\(base.host):\(base.port)/\(host.name)"
        }
        defer { for user in users.values { _ = try? Broker.ctl("delete_user", user) } }

        // Consumers only check what the producer declared.
        let system = try await ChaosSystem.start("leastpriv", host: host, urls: urls, declareTopology: false)
        defer { system.tearDown() }

        // End to end, including a poison message forwarded to a DLQ with the consumer's own rights.
        let version = try await system.withClient("producer") { client in
            try await Entitysync_V1_EntityAdmin.Client(wrapping: client).createUser(userRequest("ada"), metadata: system.authorized).version
        }
        let injector = try await host.connect("poison")
        try await injector.publish(OutgoingMessage(body: [0xFF], contentType: "text/plain", messageID: "lp-poison"),
                                   exchange: SyncTopology.exchange(for: .user))
        await injector.close()
        for (_, service) in ChaosSystem.groups {
            let store = try await system.replica(service)
            try await eventually("\(service) applied ada") { try await store.version(of: .user, id: "ada")?.version == version }
            try await eventually("\(service) dead-lettered the poison") { try await store.statistics()[.user]?.deadLettered == 1 }
        }
        let letters = try await system.withClient("user-rpc-1") { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(Entitysync_V1_ListDeadLettersRequest(),
                                                                              metadata: system.authorized).deadLetters
        }
        #expect(letters.count == 1 && letters.first?.reason.contains("unsupported-content-type") == true, "\(letters)")

        // Issue 12 item 10: a re-drive whose event fails again puts it back through the group's
        // forward exchange; the default exchange, which the consumer's user may not write, got
        // the publishing channel closed.
        let report = try await system.withClient("user-rpc-1") { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).redriveDeadLetters(Entitysync_V1_RedriveDeadLettersRequest(),
                                                                                         metadata: system.authorized)
        }
        #expect(report.failed == 1 && report.applied == 0, "\(report)")
        let afterRedrive = try await system.withClient("user-rpc-1") { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(Entitysync_V1_ListDeadLettersRequest(),
                                                                                      metadata: system.authorized).deadLetters
        }
        #expect(afterRedrive.map(\.messageID) == ["lp-poison"], "the event is back in the DLQ: \(afterRedrive)")

        // A consumer's credentials: no publishing to an entity exchange, no reading another group's queue.
        var configuration = try AMQPConfiguration(url: urls["user-rpc", default: ""], connectionName: "least-privilege probe")
        configuration.connectTimeout = .seconds(5)
        let consumerCredentials = try await AMQPConnection.connect(configuration, logger: Broker.logger("lp"))
        let forged = try ChangeCodec.message(for: Fixtures.deletion(.user, "ada", version: 99))
        await #expect {
            try await consumerCredentials.publish(forged, exchange: SyncTopology.exchange(for: .user))
        } throws: { ($0 as? AMQPError)?.message.contains("access to exchange 'exchange_user'") == true }
        await #expect {
            try await consumerCredentials.publish(forged, exchange: "", routingKey: SyncTopology.queue(for: .user, group: "consumer_org_rpc"))
        } throws: { ($0 as? AMQPError)?.message.contains("access to exchange 'amq.default'") == true }
        await #expect {
            _ = try await consumerCredentials.consume(queue: SyncTopology.queue(for: .user, group: "consumer_org_rpc"))
        } throws: { ($0 as? AMQPError)?.code == .accessRefused }
        await consumerCredentials.close()

        // Too narrow: a user-rpc that may read nothing, and one that is told to declare without configure rights.
        let blind = "lp_blind_\(suffix)"
        try Broker.ctl("add_user", blind, "secret")
        defer { _ = try? Broker.ctl("delete_user", blind) }
        let userRPC = topology.permissions(forGroup: "consumer_user_rpc")
        try Broker.ctl("set_permissions", "-p", host.name, blind, userRPC.configure, userRPC.write, "^$")
        let blindProcess = try system.launch("user-rpc-8", url: "amqp://\(blind):secret@\(base.host):\(base.port)/\(host.name)")
        try await eventually("the blind user-rpc stops") { !blindProcess.isRunning }
        #expect(!blindProcess.exitedCleanly)
        let blindLog = system.log("user-rpc-8")
        #expect(blindLog.contains("refused to let this service read queue 'exchange_group_consumer_user_rpc'")
                && blindLog.contains("entity-sync topology permissions --group consumer_user_rpc"), "\(blindLog)")

        let declaring = try system.launch("user-rpc-9", declareTopology: true)
        try await eventually("the declaring user-rpc stops") { !declaring.isRunning }
        #expect(!declaring.exitedCleanly)
        let declaringLog = system.log("user-rpc-9")
        #expect(declaringLog.contains("refused to let this service declare its exchanges and queues")
                && declaringLog.contains("--declare-topology false"), "\(declaringLog)")

        #expect(try await system.stop().isEmpty)
    }
}
