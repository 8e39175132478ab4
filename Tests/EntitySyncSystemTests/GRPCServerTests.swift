import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import EntitySyncSQLite
import ServiceLifecycle
import EntitySyncTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Testing

/// The gRPC server on libnghttp2 as clients see it: its wire contract from grpcio and raw
/// HTTP/2, and TLS — every service, our own clients and grpcio, mutual TLS, wrong CAs and
/// plaintext clients.
@Suite(.enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct GRPCServerTests {
    private static let python = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("python")

    @Test func theWireContractHoldsForGRPCIOAndRawHTTP2() async throws {
        let system = try await RunningSystem.start("contract")
        let producer = try await system.producer.address.port()
        let userRPC = try await system.userRPC[0].address.port()
        let completion = try ChildProcess.run("/usr/bin/env", ["python3", Self.python.appendingPathComponent("grpc_contract_check.py").path,
                                                               "127.0.0.1:\(producer)", "127.0.0.1:\(userRPC)", RunningSystem.token])
        #expect(completion.succeeded, "contract check failed:\n\(completion.output)")
        #expect(completion.output.contains("grpc contract: ok"))
        try await system.stop()
    }

    @Test(.enabled(if: Broker.tlsDirectory != nil, "needs the test certificates (scripts/test makes them)"))
    func everyServiceServesTLSToGRPCIOAndOurClients() async throws {
        let tls = try #require(Broker.tlsDirectory)
        let system = try await RunningSystem.start("tls", tls: ServerTLS(certificatePath: "\(tls)/server.pem", keyPath: "\(tls)/server.key"),
                                                   clientTLS: ClientTLS(caPath: "\(tls)/ca.pem"))
        let producer = try await system.producer.address.port()
        let userRPC = try await system.userRPC[0].address.port()
        let orgRPC = try await system.orgRPC[0].address.port()
        // grpcio over TLS: mutations with the token, the snapshot stream, waits and queries.
        let completion = try ChildProcess.run("/usr/bin/env", [
            "python3", Self.python.appendingPathComponent("grpc_client_check.py").path,
            "localhost:\(producer)", "localhost:\(userRPC)", RunningSystem.token, "\(tls)/ca.pem",
        ])
        #expect(completion.succeeded, "python client over TLS failed:\n\(completion.output)")
        #expect(completion.output.contains("python grpc client: ok"))
        // Our clients: grpc-swift with the CA, and ctl with --tls-ca.
        try await system.withClient(orgRPC) { client in
            let status = try await Grpc_Health_V1_Health.Client(wrapping: client).check(Grpc_Health_V1_HealthCheckRequest())
            #expect(status.status == .serving)
        }
        let ctl = try ChildProcess.run(entitySyncBinary, [
            "ctl", "health", "--tls-ca", "\(tls)/ca.pem", "localhost:\(producer)", "localhost:\(userRPC)", "localhost:\(orgRPC)",
        ])
        #expect(ctl.succeeded && ctl.output.components(separatedBy: "SERVING").count == 4, "ctl health over TLS:\n\(ctl.output)")
        // ctl import (on our libnghttp2 client) over TLS; refused with another CA or in plaintext.
        let rows = system.host.directory + "/tls-import.jsonl"
        try "{\"type\":\"user\",\"id\":\"tls1\",\"name\":\"T\",\"email\":\"t1@example.com\"}\n".write(toFile: rows, atomically: true, encoding: .utf8)
        let imported = try ChildProcess.run(entitySyncBinary, ["ctl", "import", rows, "--tls-ca", "\(tls)/ca.pem",
                                                               "--producer", "localhost:\(producer)", "--token", RunningSystem.token])
        #expect(imported.succeeded && imported.output.contains("1 created"), "ctl import over TLS:\n\(imported.output)")
        for refused in [["--tls-ca", "\(tls)/other-ca.pem"], []] {
            let failed = try ChildProcess.run(entitySyncBinary, ["ctl", "import", rows, "--producer", "localhost:\(producer)",
                                                                 "--token", RunningSystem.token] + refused)
            #expect(!failed.succeeded && failed.output.contains("refused the import"), "ctl import \(refused):\n\(failed.output)")
        }
        // A client that trusts another CA, and one that speaks plaintext, are refused.
        let wrongCA = await statusCode {
            try await withGRPCClient(transport: .http2NIOPosix(target: .dns(host: "localhost", port: producer),
                                                               transportSecurity: ClientTLS(caPath: "\(tls)/other-ca.pem").transportSecurity)) { client in
                _ = try await Grpc_Health_V1_Health.Client(wrapping: client).check(Grpc_Health_V1_HealthCheckRequest())
            }
        }
        #expect(wrongCA == .unavailable)
        let plaintext = await statusCode {
            try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: producer),
                                                               transportSecurity: .plaintext)) { client in
                _ = try await Grpc_Health_V1_Health.Client(wrapping: client).check(Grpc_Health_V1_HealthCheckRequest())
            }
        }
        #expect(plaintext == .unavailable)
        let ctlPlain = try ChildProcess.run(entitySyncBinary, ["ctl", "health", "localhost:\(producer)"])
        #expect(!ctlPlain.succeeded && ctlPlain.output.contains("UNREACHABLE"), "plaintext ctl against TLS:\n\(ctlPlain.output)")
        // A new group loads the producer's snapshot over TLS.
        let groups = SyncTopology.defaultGroups + ["consumer_audit"]
        var audit = ServiceConfiguration(amqpURL: system.host.url, listen: HostPort(host: "127.0.0.1", port: 0),
                                         database: system.host.path("audit"), topology: SyncTopology(routes: [.user: groups, .group: groups]),
                                         producer: HostPort(host: "localhost", port: producer), instanceName: "audit")
        audit.tls = ServerTLS(certificatePath: "\(tls)/server.pem", keyPath: "\(tls)/server.key")
        audit.clientTLS = ClientTLS(caPath: "\(tls)/ca.pem")
        let auditService = ConsumerService(kind: .userRPC, group: "consumer_audit", configuration: audit, logger: Broker.logger("audit"))
        let auditGroup = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [ServiceGroupConfiguration.ServiceConfiguration(service: auditService)], logger: Broker.logger("audit")))
        let running = Task { try await auditGroup.run() }
        try await eventually("audit SERVING after its snapshot") { auditService.health.isServing }
        let replica = try SQLiteReplicaStore(path: system.host.path("audit"))
        #expect(try await replica.user(id: "py-user") != nil, "the snapshot over TLS reached the new group")
        await auditGroup.triggerGracefulShutdown()
        try await running.value
        try await system.stop()
    }

    @Test(.enabled(if: Broker.tlsDirectory != nil, "needs the test certificates (scripts/test makes them)"))
    func mutualTLSRefusesClientsWithoutACertificate() async throws {
        let tls = try #require(Broker.tlsDirectory)
        let server = ServerTLS(certificatePath: "\(tls)/server.pem", keyPath: "\(tls)/server.key", clientCAPath: "\(tls)/ca.pem")
        let system = try await RunningSystem.start("mtls", tls: server,
                                                   clientTLS: ClientTLS(caPath: "\(tls)/ca.pem", certificatePath: "\(tls)/client.pem",
                                                                        keyPath: "\(tls)/client.key"))
        let producer = try await system.producer.address.port()
        try await system.withClient(producer) { client in
            _ = try await Entitysync_V1_EntityAdmin.Client(wrapping: client).createUser(userRequest("ada"), metadata: system.authorized)
        }
        let anonymous = await statusCode {
            try await withGRPCClient(transport: .http2NIOPosix(target: .dns(host: "localhost", port: producer),
                                                               transportSecurity: ClientTLS(caPath: "\(tls)/ca.pem").transportSecurity)) { client in
                _ = try await Grpc_Health_V1_Health.Client(wrapping: client).check(Grpc_Health_V1_HealthCheckRequest())
            }
        }
        #expect(anonymous == .unavailable)
        let ctl = try ChildProcess.run(entitySyncBinary, [
            "ctl", "health", "--tls-ca", "\(tls)/ca.pem", "--tls-cert", "\(tls)/client.pem", "--tls-key", "\(tls)/client.key",
            "localhost:\(producer)",
        ])
        #expect(ctl.succeeded, "ctl with a client certificate:\n\(ctl.output)")
        let rows = system.host.directory + "/mtls-import.jsonl"
        try "{\"type\":\"user\",\"id\":\"mtls1\",\"name\":\"M\",\"email\":\"m1@example.com\"}\n".write(toFile: rows, atomically: true, encoding: .utf8)
        let imported = try ChildProcess.run(entitySyncBinary, [
            "ctl", "import", rows, "--tls-ca", "\(tls)/ca.pem", "--tls-cert", "\(tls)/client.pem", "--tls-key", "\(tls)/client.key",
            "--producer", "localhost:\(producer)", "--token", RunningSystem.token,
        ])
        #expect(imported.succeeded && imported.output.contains("1 created"), "ctl import with a client certificate:\n\(imported.output)")
        try await system.stop()
    }
}
