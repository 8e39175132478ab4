import AMQPClient
import EntitySyncCore
import GRPCCore
import HTTP2RPC
import Logging
import ServiceLifecycle
import Synchronization

/// Pieces every service process shares: the gRPC server on HTTP/2, and a broker connection
/// that waits out a broker that is not up yet but fails fast on configuration errors.
enum ServiceRuntime {
    static func makeServer(_ configuration: ServiceConfiguration, services: [any RegistrableRPCService],
                           interceptors: [any ServerInterceptor], routes: RPCRoutes = RPCRoutes(),
                           logger: Logger) throws -> (GRPCServer<HTTP2RPCTransport>, HTTP2RPCTransport) {
        var server = RPCServerConfiguration(host: configuration.listen.host, port: configuration.listen.port)
        // Unlimited would let one client connection open any number of calls at once.
        server.maxConcurrentStreams = configuration.maxConcurrentStreams
        server.maxRequestBytes = configuration.maxRequestBytes
        server.loopThreads = configuration.rpcThreads
        server.tls = try configuration.tls?.serverConfiguration()
        let transport = HTTP2RPCTransport(configuration: server, routes: routes, logger: logger)
        return (GRPCServer(transport: transport, services: services, interceptors: interceptors), transport)
    }

    /// Requires the bearer token (when one is set) on `methods` from the moment a call's headers
    /// are in. They must not be answered on the event loop, which checks no metadata.
    static func protect(_ methods: Set<MethodDescriptor>, in routes: inout RPCRoutes, token: String?,
                        recorder: RPCCallRecorder) {
        for method in methods {
            precondition(!routes.answersOnTheLoop(method), "\(method) needs a token but is answered on the event loop")
        }
        routes.admission = recorder.admission(token: token, protectedMethods: methods)
    }

    static func connect(_ configuration: ServiceConfiguration, role: String, logger: Logger) async throws -> AMQPConnection {
        var amqp = try AMQPConfiguration(url: configuration.amqpURL, connectionName: "\(role):\(configuration.instanceName)")
        amqp.publishTimeout = configuration.publishTimeout
        // SIGTERM while the broker is still unreachable must stop the process, not wait for the broker.
        let settings = amqp
        return try await cancelWhenGracefulShutdown {
            try await self.connectRetrying(settings, logger: logger)
        }
    }

    /// Opens the service's store, waiting for it as for the broker: a database that is down or
    /// still starting is retried with backoff (SIGTERM stops the wait); a configuration error
    /// (a wrong password, a schema of another store) ends the start at once.
    static func openStore<Store: Sendable>(_ location: StoreLocation, logger: Logger,
                                           _ open: @escaping @Sendable () async throws -> Store) async throws -> Store {
        try await cancelWhenGracefulShutdown {
            let backoff = Backoff()
            var attempt = 0
            while true {
                do {
                    return try await open()
                } catch let error as SyncError where error.code == .storeUnavailable {
                    let delay = backoff.delay(attempt: attempt)
                    attempt += 1
                    logger.warning("store not reachable yet; retrying", metadata: [
                        "store": "\(location)", "error": "\(error.message)", "retry_in": "\(delay)", "attempt": "\(attempt)",
                    ])
                    try await Task.sleep(for: delay)
                }
            }
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
