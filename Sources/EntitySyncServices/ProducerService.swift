import AMQPClient
import EntitySyncCore
import EntitySyncGRPC
import GRPCCore
import HTTP2RPC
import Logging
import ServiceLifecycle

/// The producer process: source store, topology declared at startup, outbox relay, and the
/// EntityAdmin gRPC API. NOT_SERVING until the broker connection and topology are ready, and
/// again while it shuts down.
public final class ProducerService: Service {
    public let configuration: ServiceConfiguration
    public let health = HealthStatus()
    public let address = ListeningAddress()
    private let logger: Logger

    public init(configuration: ServiceConfiguration, logger: Logger) {
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "service"] = "producer"
        self.logger = logger
    }

    public func run() async throws {
        do {
            try await self.runUntilShutdown()
        } catch where ServiceRuntime.isShutdownBeforeReady(error) {
            self.logger.notice("stopped before it was ready")
        }
    }

    private func runUntilShutdown() async throws {
        try self.configuration.topology.validate()
        let location = try StoreLocation(self.configuration.database)
        let (name, logger) = (self.configuration.instanceName, self.logger)
        let store = try await ServiceRuntime.openStore(location, logger: logger) {
            try await location.openSource(producer: name, logger: logger)
        }
        let names: Set<String> = [Entitysync_V1_EntityAdmin.descriptor.fullyQualifiedService]
        let healthService = HealthService(status: self.health, services: names)
        let recorder = RPCCallRecorder(logger: self.logger)
        var routes = RPCRoutes()
        routes.unarySerialized(Grpc_Health_V1_Health.Method.Check.descriptor,
                                  recorder.observed(Grpc_Health_V1_Health.Method.Check.descriptor) { request, _ in
                                      try healthService.checkSerialized(request)
                                  })
        let admin = EntityAdminService(store: store)
        admin.register(in: &routes, recorder: recorder, token: self.configuration.token)
        ServiceRuntime.protect(EntityAdminService.mutations, in: &routes, token: self.configuration.token, recorder: recorder)
        let (server, transport) = try ServiceRuntime.makeServer(self.configuration, services: [
            admin,
            healthService,
        ], interceptors: [
            RPCMetricsInterceptor(recorder: recorder),
            BearerTokenInterceptor(token: self.configuration.token, protectedMethods: EntityAdminService.mutations),
        ], routes: routes, logger: self.logger)
        self.address.set(transport)
        let shutdown = ShutdownActions()
        shutdown.add { [health] in health.set(serving: false) }
        let serving = ServerRun(server, logger: self.logger)
        shutdown.add { [grace = self.configuration.shutdownGrace] in serving.beginShutdown(grace: grace) }

        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await serving.wait() }
                let connection = try await ServiceRuntime.connect(self.configuration, role: "producer", logger: self.logger)
                let producer = SyncProducer(topology: self.configuration.topology, store: store, broker: connection,
                                            name: self.configuration.instanceName,
                                            relayConfiguration: self.configuration.relay, logger: self.logger)
                try await producer.declareTopology()
                let relay = Task { await producer.relay.run() }
                shutdown.add { relay.cancel() }
                self.health.set(serving: true)
                // A SIGTERM that came during startup has closed the listener already: nothing
                // to announce then, and no reason to fail the clean stop that follows.
                let port = (try? await self.address.port()).map(String.init) ?? "closed"
                self.logger.info("producer ready", metadata: [
                    "grpc.port": "\(port)", "store": "\(location)",
                ])
                group.addTask {
                    await relay.value
                    await connection.close()
                }
            }
        } onGracefulShutdown: {
            self.logger.info("producer shutting down")
            shutdown.run()
        }
    }
}
