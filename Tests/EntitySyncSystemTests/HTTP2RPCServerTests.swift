import EntitySyncGRPC
import EntitySyncProto
import EntitySyncTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import HTTP2RPC
import Logging
import Synchronization
import Testing

/// The libnghttp2 server's connection management on its own, with a service of the test's:
/// graceful shutdown lets a call in flight finish, an idle connection gets GOAWAY, a peer that
/// stops answering PINGs is dropped, and floods of PINGs, SETTINGS and resets lose their
/// connection while the server keeps serving.
struct HTTP2RPCServerTests {
    private static let python = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("python")

    /// Health whose Check waits until the test lets it answer.
    final class GatedHealth: Grpc_Health_V1_Health.SimpleServiceProtocol {
        private struct State {
            var opened = false
            var entered = false
            var waiting: [CheckedContinuation<Void, Never>] = []
        }
        private let state = Mutex(State())

        var entered: Bool { self.state.withLock { $0.entered } }

        func check(request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext) async throws -> Grpc_Health_V1_HealthCheckResponse {
            await withCheckedContinuation { continuation in
                let resumeNow = self.state.withLock { state -> Bool in
                    state.entered = true
                    if state.opened { return true }
                    state.waiting.append(continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
            var response = Grpc_Health_V1_HealthCheckResponse()
            response.status = .serving
            return response
        }

        func watch(request: Grpc_Health_V1_HealthCheckRequest, response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
                   context: ServerContext) async throws {
            throw RPCError(code: .unimplemented, message: "not in this test")
        }

        func open() {
            let waiting = self.state.withLock { state in
                state.opened = true
                defer { state.waiting = [] }
                return state.waiting
            }
            for continuation in waiting { continuation.resume() }
        }
    }

    private static func serve(_ configure: (inout RPCServerConfiguration) -> Void = { _ in },
                              services: [any RegistrableRPCService]) async throws -> (GRPCServer<HTTP2RPCTransport>, HTTP2RPCTransport, Task<Void, any Error>, Int) {
        var configuration = RPCServerConfiguration(host: "127.0.0.1", port: 0)
        configure(&configuration)
        let transport = HTTP2RPCTransport(configuration: configuration, logger: Logger(label: "test"))
        let server = GRPCServer(transport: transport, services: services)
        let serving = Task { try await server.serve() }
        return (server, transport, serving, try await transport.listeningPort())
    }

    @Test func gracefulShutdownLetsACallInFlightFinish() async throws {
        let health = GatedHealth()
        let (server, _, serving, port) = try await Self.serve(services: [health])
        let reply = try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port),
                                                                       transportSecurity: .plaintext)) { client in
            let call = Task { try await Grpc_Health_V1_Health.Client(wrapping: client).check(Grpc_Health_V1_HealthCheckRequest()) }
            try await eventually("the call reached its handler") { health.entered }
            server.beginGracefulShutdown()
            // The listener closes at once: no new connections while the call in flight goes on.
            try await eventually("the listener closed") { !Self.accepts(port) }
            health.open()
            return try await call.value
        }
        #expect(reply.status == .serving)
        try await serving.value
    }

    @Test func idleConnectionsGetGoawayAndSilentPeersAreDropped() async throws {
        let (idleServer, _, idleServing, idlePort) = try await Self.serve({ $0.idleTimeout = .seconds(2) }, services: [GatedHealth()])
        let idle = try ChildProcess.run("/usr/bin/env", ["python3", Self.python.appendingPathComponent("h2_idle_check.py").path,
                                                         "127.0.0.1:\(idlePort)", "idle", "10"])
        #expect(idle.succeeded && idle.output.contains("h2 idle: ok"), "\(idle.output)")
        idleServer.beginGracefulShutdown()
        try await idleServing.value

        let (pingServer, _, pingServing, pingPort) = try await Self.serve({
            $0.keepaliveInterval = .seconds(1)
            $0.keepaliveTimeout = .seconds(1)
        }, services: [GatedHealth()])
        let silent = try ChildProcess.run("/usr/bin/env", ["python3", Self.python.appendingPathComponent("h2_idle_check.py").path,
                                                           "127.0.0.1:\(pingPort)", "silent", "10"])
        #expect(silent.succeeded && silent.output.contains("h2 idle: ok"), "\(silent.output)")
        pingServer.beginGracefulShutdown()
        try await pingServing.value
    }

    @Test func floodsOfPingsSettingsAndResetsLoseTheirConnection() async throws {
        let health = GatedHealth()
        health.open()
        let (server, _, serving, port) = try await Self.serve(services: [health])
        let check = try ChildProcess.run("/usr/bin/env", ["python3", Self.python.appendingPathComponent("h2_hostile_check.py").path,
                                                          "127.0.0.1:\(port)"])
        #expect(check.succeeded && check.output.contains("h2 hostile: ok"), "\(check.output)")
        server.beginGracefulShutdown()
        try await serving.value
    }

    /// Whether something accepts TCP connections on 127.0.0.1:port.
    private static func accepts(_ port: Int) -> Bool {
        (try? ChildProcess.run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(port)"]))?.succeeded == true
    }
}
