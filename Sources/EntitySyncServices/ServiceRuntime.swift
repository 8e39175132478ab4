import AMQPClient
import EntitySyncCore
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle
import Synchronization

/// Pieces every service process shares: the gRPC server on HTTP/2, and a broker connection
/// that waits out a broker that is not up yet but fails fast on configuration errors.
enum ServiceRuntime {
    static func makeServer(_ configuration: ServiceConfiguration, services: [any RegistrableRPCService],
                           interceptors: [any ServerInterceptor]) -> (GRPCServer<HTTP2ServerTransport.Posix>, HTTP2ServerTransport.Posix) {
        let transport = HTTP2ServerTransport.Posix(
            address: .ipv4(host: configuration.listen.host, port: configuration.listen.port),
            transportSecurity: .plaintext,
            config: .defaults { config in
                // Unlimited by default: bound what one client connection can open at once.
                config.http2.maxConcurrentStreams = configuration.maxConcurrentStreams
                config.rpc.maxRequestPayloadSize = configuration.maxRequestBytes
            }
        )
        return (GRPCServer(transport: transport, services: services, interceptors: interceptors), transport)
    }

    static func connect(_ configuration: ServiceConfiguration, role: String, logger: Logger) async throws -> AMQPConnection {
        let amqp = try AMQPConfiguration(url: configuration.amqpURL, connectionName: "\(role):\(configuration.instanceName)")
        // SIGTERM while the broker is still unreachable must stop the process, not wait for the broker.
        return try await cancelWhenGracefulShutdown {
            try await self.connectRetrying(amqp, logger: logger)
        }
    }

    /// True when `error` is how a service's startup ends because it was asked to stop.
    static func isShutdownBeforeReady(_ error: any Error) -> Bool {
        error is CancellationError && Task.isShuttingDownGracefully
    }

    private static func connectRetrying(_ amqp: AMQPConfiguration, logger: Logger) async throws -> AMQPConnection {
        var attempt = 0
        while true {
            do {
                return try await AMQPConnection.connect(amqp, logger: logger)
            } catch let error as AMQPError where error.isRetryable || error.code == .hostNotFound {
                let delay = amqp.reconnectBackoff.delay(attempt: attempt)
                attempt += 1
                logger.warning("broker not reachable yet; retrying", metadata: [
                    "error": "\(error.message)", "retry_in": "\(delay)", "attempt": "\(attempt)",
                ])
                try await Task.sleep(for: delay)
            }
        }
    }
}

/// A gRPC server serving in its own task, so that it can be stopped hard when a graceful stop
/// takes too long: grpc-swift's graceful close waits for each client to acknowledge it, and a
/// client that holds its connection without reading (a hung or frozen peer) never does.
final class ServerRun: Sendable {
    private enum State { case serving, stopping, forced, stopped }

    private let server: GRPCServer<HTTP2ServerTransport.Posix>
    private let task: Task<Void, any Error>
    private let state = Mutex(State.serving)
    private let logger: Logger

    init(_ server: GRPCServer<HTTP2ServerTransport.Posix>, logger: Logger) {
        self.server = server
        self.logger = logger
        self.task = Task { try await server.serve() }
    }

    /// Stops accepting calls; after `grace`, closes whatever connections are still open.
    func beginShutdown(grace: Duration) {
        self.state.withLock { if $0 == .serving { $0 = .stopping } }
        self.server.beginGracefulShutdown()
        Task {
            try? await Task.sleep(for: grace)
            let force = self.state.withLock { state -> Bool in
                guard state == .stopping else { return false }
                state = .forced
                return true
            }
            guard force else { return }
            self.logger.warning("gRPC clients did not finish within the shutdown grace period; closing their connections",
                                metadata: ["grace": "\(grace)"])
            self.task.cancel()
        }
    }

    /// Waits until the server has stopped (cancelling the caller stops it at once).
    func wait() async throws {
        let result = await withTaskCancellationHandler {
            await self.task.result
        } onCancel: {
            self.task.cancel()
        }
        let forced = self.state.withLock { state -> Bool in
            defer { state = .stopped }
            return state == .forced
        }
        if case .failure(let error) = result, !(forced && error is CancellationError) {
            throw error
        }
    }
}

/// Where a process's gRPC server listens, once it does (port 0 picks a free port).
public final class ListeningAddress: Sendable {
    private let transport = Mutex<HTTP2ServerTransport.Posix?>(nil)

    func set(_ transport: HTTP2ServerTransport.Posix) { self.transport.withLock { $0 = transport } }

    /// Waits until the server is bound and returns its port.
    public func port() async throws -> Int {
        while true {
            if let transport = self.transport.withLock({ $0 }) {
                let address = try await transport.listeningAddress
                if let ipv4 = address.ipv4 { return ipv4.port }
                if let ipv6 = address.ipv6 { return ipv6.port }
                throw SyncError(.configuration, "the server listens on a non-IP address \(address)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}
