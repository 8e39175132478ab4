import EntitySyncGRPC
import EntitySyncProto
import EntitySyncTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import HTTP2RPC
import Logging
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// The libnghttp2 server's connection management on its own, with a service of the test's:
/// graceful shutdown lets a call in flight finish, an idle connection gets GOAWAY, a peer that
/// stops answering PINGs is dropped, and floods of PINGs, SETTINGS and resets lose their
/// connection while the server keeps serving; a method answered by a task of the server's own
/// sees its metadata, is waited for at shutdown and cancelled with its call.
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

    /// Check answered by a task route of the server's own, which waits until the test opens it
    /// or the call is cancelled; it records the metadata it saw and the cancellations.
    final class GatedRoute: Sendable {
        private struct State {
            var opened = false
            var entered = 0
            var cancelled = 0
            var authorization: [String] = []
            var waiting: [Int: CheckedContinuation<Void, Never>] = [:]
            var nextWaiter = 0
        }
        private let state = Mutex(State())

        var entered: Int { self.state.withLock { $0.entered } }
        var cancelled: Int { self.state.withLock { $0.cancelled } }
        var authorization: [String] { self.state.withLock { $0.authorization } }

        var routes: RPCRoutes {
            var routes = RPCRoutes()
            routes.unaryAsync(Grpc_Health_V1_Health.Method.Check.descriptor) { (request: Grpc_Health_V1_HealthCheckRequest, call) in
                try await self.check(request, call)
            }
            return routes
        }

        private func check(_ request: Grpc_Health_V1_HealthCheckRequest, _ call: RPCCallInfo) async throws -> Grpc_Health_V1_HealthCheckResponse {
            let waiter = self.state.withLock { state -> Int in
                state.entered += 1
                if let authorization = call.metadata("authorization") { state.authorization.append(authorization) }
                state.nextWaiter += 1
                return state.nextWaiter
            }
            await withTaskCancellationHandler {
                await withCheckedContinuation { continuation in
                    let resumeNow = self.state.withLock { state -> Bool in
                        if state.opened || Task.isCancelled { return true }
                        state.waiting[waiter] = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                self.state.withLock { $0.waiting.removeValue(forKey: waiter) }?.resume()
            }
            if Task.isCancelled {
                self.state.withLock { $0.cancelled += 1 }
                throw CancellationError()
            }
            var response = Grpc_Health_V1_HealthCheckResponse()
            response.status = .serving
            response.unknownFields = request.unknownFields
            return response
        }

        func open() {
            let waiting = self.state.withLock { state in
                state.opened = true
                defer { state.waiting = [:] }
                return Array(state.waiting.values)
            }
            for continuation in waiting { continuation.resume() }
        }
    }

    private static func serve(_ configure: (inout RPCServerConfiguration) -> Void = { _ in }, routes: RPCRoutes = RPCRoutes(),
                              services: [any RegistrableRPCService]) async throws -> (GRPCServer<HTTP2RPCTransport>, HTTP2RPCTransport, Task<Void, any Error>, Int) {
        var configuration = RPCServerConfiguration(host: "127.0.0.1", port: 0)
        configure(&configuration)
        let transport = HTTP2RPCTransport(configuration: configuration, routes: routes, logger: Logger(label: "test"))
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

    @Test func aTaskRouteSeesItsMetadataAndGracefulShutdownWaitsForIt() async throws {
        let route = GatedRoute()
        let (server, _, serving, port) = try await Self.serve(routes: route.routes, services: [GatedHealth()])
        let reply = try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port),
                                                                       transportSecurity: .plaintext)) { client in
            let call = Task {
                try await Grpc_Health_V1_Health.Client(wrapping: client).check(Grpc_Health_V1_HealthCheckRequest(),
                                                                               metadata: ["authorization": "Bearer t0ken"])
            }
            try await eventually("the call reached its task") { route.entered == 1 }
            server.beginGracefulShutdown()
            try await eventually("the listener closed") { !Self.accepts(port) }
            route.open()
            return try await call.value
        }
        #expect(reply.status == .serving)
        #expect(route.authorization == ["Bearer t0ken"])
        #expect(route.cancelled == 0)
        try await serving.value
    }

    @Test func aCancelledOrLateTaskCallCancelsItsTask() async throws {
        let route = GatedRoute()
        let (server, _, serving, port) = try await Self.serve(routes: route.routes, services: [GatedHealth()])
        try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port),
                                                           transportSecurity: .plaintext)) { client in
            let health = Grpc_Health_V1_Health.Client(wrapping: client)
            // The client gives up (RST_STREAM): the server cancels the call's task.
            let call = Task { try await health.check(Grpc_Health_V1_HealthCheckRequest()) }
            try await eventually("the call reached its task") { route.entered == 1 }
            call.cancel()
            _ = await call.result
            try await eventually("the task was cancelled") { route.cancelled == 1 }
            // A deadline the server keeps: DEADLINE_EXCEEDED, and the task is cancelled.
            var options = CallOptions.defaults
            options.timeout = .milliseconds(300)
            await #expect(throws: RPCError.self) { try await health.check(Grpc_Health_V1_HealthCheckRequest(), options: options) }
            try await eventually("the late call's task was cancelled") { route.cancelled == 2 }
            // The connection serves on.
            route.open()
            #expect(try await health.check(Grpc_Health_V1_HealthCheckRequest()).status == .serving)
        }
        server.beginGracefulShutdown()
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

    /// A call refused while its client is still sending (here a message claiming 2 GiB) gets
    /// its status, then a RST_STREAM(NO_ERROR): a client that never ends its request does not
    /// hold the stream, and the connection can still go idle.
    @Test(arguments: ["bridged", "task", "immediate"]) func aRefusedCallWhoseClientKeepsSendingIsReset(route: String) async throws {
        var routes = RPCRoutes()
        switch route {
        case "task": routes = GatedRoute().routes
        case "immediate":
            routes.unary(Grpc_Health_V1_Health.Method.Check.descriptor) { (_: Grpc_Health_V1_HealthCheckRequest, _) in
                var response = Grpc_Health_V1_HealthCheckResponse()
                response.status = .serving
                return response
            }
        default: break
        }
        let (server, _, serving, port) = try await Self.serve(routes: routes, services: [GatedHealth()])
        let refused = try ChildProcess.run("/usr/bin/env", ["python3", Self.python.appendingPathComponent("h2_idle_check.py").path,
                                                            "127.0.0.1:\(port)", "refused", "15"])
        #expect(refused.succeeded && refused.output.contains("h2 refused: ok"), "\(route): \(refused.output)")
        server.beginGracefulShutdown()
        try await serving.value
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

    @Test func theNativeClientsDeadlineEndsACallAndTheServerCancelsIt() async throws {
        let route = GatedRoute()
        let (server, _, serving, port) = try await Self.serve(routes: route.routes, services: [GatedHealth()])
        let client = try RPCClient(host: "127.0.0.1", port: port, callTimeout: .milliseconds(300))
        let failure = await #expect(throws: RPCError.self) {
            let _: Grpc_Health_V1_HealthCheckResponse = try await client.unary(Grpc_Health_V1_Health.Method.Check.descriptor,
                                                                                Grpc_Health_V1_HealthCheckRequest())
        }
        #expect(failure?.code == .deadlineExceeded, "\(String(describing: failure))")
        try await eventually("the server cancelled the late call's task") { route.cancelled == 1 }
        // A call's own timeout overrides the client's, and the connection serves on.
        route.open()
        let reply: Grpc_Health_V1_HealthCheckResponse = try await client.unary(Grpc_Health_V1_Health.Method.Check.descriptor,
                                                                                Grpc_Health_V1_HealthCheckRequest(), timeout: .seconds(30))
        #expect(reply.status == .serving)
        // A timeout longer than grpc-timeout can say is clamped to its longest, not a crash.
        let unbounded: Grpc_Health_V1_HealthCheckResponse = try await client.unary(Grpc_Health_V1_Health.Method.Check.descriptor,
                                                                                    Grpc_Health_V1_HealthCheckRequest(),
                                                                                    timeout: .seconds(Int64.max))
        #expect(unbounded.status == .serving)
        await client.close()
        server.beginGracefulShutdown()
        try await serving.value
    }

    @Test func aFirstBurstBeyondTheServersStreamLimitWaitsInsteadOfBeingRefused() async throws {
        let route = GatedRoute()
        let (server, _, serving, port) = try await Self.serve({ $0.maxConcurrentStreams = 2 }, routes: route.routes,
                                                              services: [GatedHealth()])
        let client = try RPCClient(host: "127.0.0.1", port: port)
        let calls = (0..<10).map { _ in
            Task {
                let reply: Grpc_Health_V1_HealthCheckResponse = try await client.unary(Grpc_Health_V1_Health.Method.Check.descriptor,
                                                                                        Grpc_Health_V1_HealthCheckRequest())
                return reply.status
            }
        }
        // The server runs two at a time; the others wait on the client's connection.
        try await eventually("two calls reached the server") { route.entered == 2 }
        route.open()
        for call in calls { #expect(try await call.value == .serving) }
        #expect(route.entered == 10)
        await client.close()
        server.beginGracefulShutdown()
        try await serving.value
    }

    @Test func aServerThatSpeaksNoHTTP2FailsTheCallWithinItsDeadline() async throws {
        // Accepts connections and says nothing, as a wrong port or a hung process would.
        let silent = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(silent.localAddress?.port)
        let client = try RPCClient(host: "127.0.0.1", port: port, callTimeout: .milliseconds(500))
        let failure = await #expect(throws: RPCError.self) {
            let _: Grpc_Health_V1_HealthCheckResponse = try await client.unary(Grpc_Health_V1_Health.Method.Check.descriptor,
                                                                                Grpc_Health_V1_HealthCheckRequest())
        }
        #expect(failure?.code == .deadlineExceeded, "\(String(describing: failure))")
        #expect(failure?.message.contains("while connecting") == true, "\(String(describing: failure))")
        // A caller that gives up while the connect waits is answered at once, not at its deadline.
        let abandoned = Task {
            let _: Grpc_Health_V1_HealthCheckResponse = try await client.unary(Grpc_Health_V1_Health.Method.Check.descriptor,
                                                                                Grpc_Health_V1_HealthCheckRequest(), timeout: .seconds(3600))
        }
        abandoned.cancel()
        let cancelled = await #expect(throws: RPCError.self) { try await abandoned.value }
        #expect(cancelled?.code == .cancelled, "\(String(describing: cancelled))")
        await client.close()
        // ctl import retries such rows a few times, then stops with the reason instead of
        // waiting forever or crawling through the file.
        let rows = FileManager.default.temporaryDirectory.appendingPathComponent("silent-import-\(port).jsonl").path
        try "{\"type\":\"user\",\"id\":\"s1\",\"name\":\"S\",\"email\":\"s1@example.com\"}\n"
            .write(toFile: rows, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: rows) }
        let imported = try ChildProcess.run(entitySyncBinary, ["ctl", "import", rows, "--producer", "127.0.0.1:\(port)",
                                                               "--call-timeout", "0.1"])
        // Its last tries meet either the call's deadline or, past the connection's 10 s wait for
        // SETTINGS on a slow machine, the closed connection: both stop the import.
        #expect(!imported.succeeded && (imported.output.contains("refused the import: deadlineExceeded")
                                        || imported.output.contains("refused the import: unavailable")), "\(imported.output)")
        // Every other ctl command (on grpc-swift's client) gives up after --call-timeout too.
        // `timeout` turns a hang into a failure here instead of a stuck test run.
        let read = try ChildProcess.run("/usr/bin/timeout", ["60", entitySyncBinary, "ctl", "user", "get", "s1",
                                                             "--user-rpc", "127.0.0.1:\(port)", "--call-timeout", "0.5"])
        #expect(read.exitCode != 124 && !read.succeeded && read.output.contains("did not answer within"), "\(read.output)")
        // `status` asks every service at once and shows each that did not answer.
        let status = try ChildProcess.run("/usr/bin/timeout", ["60", entitySyncBinary, "ctl", "status", "--producer", "127.0.0.1:\(port)",
                                                               "--user-rpc", "127.0.0.1:\(port)", "--org-rpc", "127.0.0.1:\(port)",
                                                               "--call-timeout", "0.5"])
        #expect(status.exitCode != 124 && !status.succeeded
                && status.output.components(separatedBy: "did not answer within").count - 1 >= 3, "\(status.output)")
        let health = try ChildProcess.run("/usr/bin/timeout", ["60", entitySyncBinary, "ctl", "health", "127.0.0.1:\(port)"])
        #expect(health.exitCode != 124 && !health.succeeded && health.output.contains("not serving"), "\(health.output)")
        let invalid = try ChildProcess.run(entitySyncBinary, ["ctl", "health", "127.0.0.1:\(port)", "--call-timeout", "0"])
        #expect(!invalid.succeeded && invalid.output.contains("--call-timeout must be from 0.001 to 3600 seconds"), "\(invalid.output)")
        try await silent.close()
    }

    /// ctl's calls on grpc-swift's client tell the service their deadline (`grpc-timeout`), so
    /// a service stops work the command has given up on: `--call-timeout`, plus the wait of a
    /// call that waits on purpose.
    @Test func ctlSendsItsCallTimeoutToTheService() async throws {
        let seen = Mutex<[String: String]>([:])
        var routes = RPCRoutes()
        routes.unaryAsync(Entitysync_V1_UserQuery.Method.GetUser.descriptor) { (request: Entitysync_V1_GetRequest, call) in
            seen.withLock { $0["GetUser"] = call.metadata("grpc-timeout") ?? "none" }
            var reply = Entitysync_V1_UserWithGroups()
            reply.user.id = request.id
            return reply
        }
        routes.unaryAsync(Entitysync_V1_SyncInfo.Method.WaitForVersion.descriptor) { (request: Entitysync_V1_WaitForVersionRequest, call) in
            seen.withLock { $0["WaitForVersion"] = call.metadata("grpc-timeout") ?? "none" }
            var reply = Entitysync_V1_WaitForVersionResponse()
            reply.version = request.version
            return reply
        }
        let (server, _, serving, port) = try await Self.serve(routes: routes, services: [GatedHealth()])
        let read = try ChildProcess.run("/usr/bin/timeout", ["60", entitySyncBinary, "ctl", "user", "get", "u7",
                                                             "--user-rpc", "127.0.0.1:\(port)", "--call-timeout", "7"])
        #expect(read.succeeded && read.output.contains("u7"), "\(read.output)")
        let wait = try ChildProcess.run("/usr/bin/timeout", ["60", entitySyncBinary, "ctl", "wait", "--service", "user-rpc",
                                                             "--user-rpc", "127.0.0.1:\(port)", "--type", "user", "--id", "u7",
                                                             "--version", "3", "--timeout-ms", "20000", "--call-timeout", "4"])
        #expect(wait.succeeded, "\(wait.output)")
        let timeouts = seen.withLock { $0 }
        // Sent as the time left when the call started: at most the limit, and not much less.
        // grpc-timeout: up to 8 digits and a unit (gRPC's HTTP/2 protocol).
        func duration(_ header: String?) -> Duration? {
            guard let header, let unit = header.last, let amount = Int64(header.dropLast()) else { return nil }
            switch unit {
            case "H": return .seconds(amount * 3600)
            case "M": return .seconds(amount * 60)
            case "S": return .seconds(amount)
            case "m": return .milliseconds(amount)
            case "u": return .microseconds(amount)
            case "n": return .nanoseconds(amount)
            default: return nil
            }
        }
        let get = try #require(duration(timeouts["GetUser"]), "\(timeouts)")
        #expect(get <= .seconds(7) && get > .seconds(5), "\(timeouts)")
        let waited = try #require(duration(timeouts["WaitForVersion"]), "\(timeouts)")
        #expect(waited <= .seconds(24) && waited > .seconds(22), "\(timeouts)")
        server.beginGracefulShutdown()
        try await serving.value
    }

    /// An HTTP/2 peer that sends its SETTINGS on every connection and then nothing, not even a
    /// PING's answer: a host that went away after the connection was made, as the client sees it.
    final class MuteAfterSettings: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let connections = Atomic<Int>(0)
        let closed = Atomic<Int>(0)

        func channelActive(context: ChannelHandlerContext) {
            self.connections.add(1, ordering: .relaxed)
            // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
            context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(bytes: [0, 0, 0, 4, 0, 0, 0, 0, 0])),
                                  promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

        func channelInactive(context: ChannelHandlerContext) {
            self.closed.add(1, ordering: .relaxed)
        }
    }

    @Test func aConnectionWhosePeerStopsAnsweringIsDroppedAfterAnOverrunCall() async throws {
        let handler = MuteAfterSettings()
        let mute = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(mute.localAddress?.port)
        let client = try RPCClient(host: "127.0.0.1", port: port, callTimeout: .milliseconds(200), probeTimeout: .milliseconds(200))
        func call() async -> RPCError? {
            do {
                let _: Grpc_Health_V1_HealthCheckResponse = try await client.unary(Grpc_Health_V1_Health.Method.Check.descriptor,
                                                                                    Grpc_Health_V1_HealthCheckRequest())
                return nil
            } catch {
                return error as? RPCError
            }
        }
        let first = await call()
        #expect(first?.code == .deadlineExceeded, "\(String(describing: first))")
        #expect(first?.message.contains("while connecting") == false, "the connection was made: \(String(describing: first))")
        // The overrun call's PING goes unanswered: the client closes the connection...
        try await eventually("the client gave up on the mute connection") { handler.closed.load(ordering: .relaxed) == 1 }
        // ...and the next call connects anew instead of overrunning on a dead one forever.
        let second = await call()
        #expect(second?.code == .deadlineExceeded, "\(String(describing: second))")
        #expect(handler.connections.load(ordering: .relaxed) == 2)
        await client.close()
        try await mute.close()
    }

    /// Whether something accepts TCP connections on 127.0.0.1:port.
    private static func accepts(_ port: Int) -> Bool {
        (try? ChildProcess.run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(port)"]))?.succeeded == true
    }
}
