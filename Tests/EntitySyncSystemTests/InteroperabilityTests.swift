import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import EntitySyncSQLite
import EntitySyncTestSupport
import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import Testing

@Suite(.enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct InteroperabilityTests {
    /// Python's grpcio, with stubs generated from proto/, talks to the Swift services.
    @Test func aPythonGRPCClientWorks() async throws {
        let system = try await RunningSystem.start("python")
        let producer = try await system.producer.address.port()
        let userRPC = try await system.userRPC[0].address.port()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("python/grpc_client_check.py")
        let completion = try ChildProcess.run("/usr/bin/env", ["python3", script.path, "127.0.0.1:\(producer)",
                                                               "127.0.0.1:\(userRPC)", RunningSystem.token])
        let text = completion.output
        #expect(completion.succeeded, "python client failed:\n\(text)")
        #expect(text.contains("python grpc client: ok"))
        try await system.stop()
    }

    /// A consumer group that did not exist when the producer started has no history in its new
    /// queues: it declares them, loads the producer's snapshot, then consumes.
    @Test func aGroupAddedLaterBootstrapsFromTheSnapshot() async throws {
        let system = try await RunningSystem.start("bootstrap")
        let producerPort = try await system.producer.address.port()
        let metadata = system.authorized
        try await system.withClient(producerPort) { client in
            let admin = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            for index in 0..<20 { _ = try await admin.createUser(userRequest("u\(index)"), metadata: metadata) }
            var delete = Entitysync_V1_DeleteRequest()
            delete.id = "u3"
            _ = try await admin.deleteUser(delete, metadata: metadata)
            var group = Entitysync_V1_CreateGroupRequest()
            group.group.id = "all"
            group.group.name = "All"
            group.group.memberIds = ["u1", "u2"]
            _ = try await admin.createGroup(group, metadata: metadata)
        }
        let groups = SyncTopology.defaultGroups + ["consumer_audit"]
        let topology = SyncTopology(routes: [.user: groups, .group: groups])
        let store = system.host.path("audit")
        let configuration = ServiceConfiguration(amqpURL: system.host.url, listen: HostPort(host: "127.0.0.1", port: 0),
                                                 database: store, topology: topology,
                                                 producer: HostPort(host: "127.0.0.1", port: producerPort), instanceName: "audit")
        let audit = ConsumerService(kind: .userRPC, group: "consumer_audit", configuration: configuration,
                                    logger: Broker.logger("audit"))
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [ServiceGroupConfiguration.ServiceConfiguration(service: audit)], logger: Broker.logger("audit")))
        let running = Task { try await group.run() }
        try await eventually("audit SERVING") { audit.health.isServing }

        // A change after the snapshot arrives through the new group's queue.
        try await system.withClient(producerPort) { client in
            _ = try await Entitysync_V1_EntityAdmin.Client(wrapping: client).createUser(userRequest("late"), metadata: metadata)
        }
        let replica = try SQLiteReplicaStore(path: store)
        let source = try SQLiteSourceStore(path: system.host.path("producer"), producer: "inspector")
        try await eventually("audit converged") {
            let users = try await replica.versions(of: .user)
            let groups = try await replica.versions(of: .group)
            let expectedUsers = try await source.versions(of: .user)
            let expectedGroups = try await source.versions(of: .group)
            return users == expectedUsers && groups == expectedGroups
        }
        #expect(try await replica.versions(of: .user)["u3"]?.deleted == true, "tombstones come with the snapshot")
        await group.triggerGracefulShutdown()
        try await running.value
        try await system.stop()
    }
}
