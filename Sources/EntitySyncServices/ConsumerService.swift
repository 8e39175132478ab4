import AMQPClient
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import GRPCCore
import GRPCNIOTransportHTTP2
import HTTP2RPC
import Logging
import ServiceLifecycle

/// A consumer-group process (`user-rpc` or `org-rpc`): the group's shared replica store, its
/// consumer, and its query API plus SyncInfo over gRPC.
public final class ConsumerService: Service {
    /// The two kinds of consumer service and what each serves.
    public enum Kind: String, Sendable, CaseIterable {
        case userRPC = "user-rpc"
        case orgRPC = "org-rpc"

        public var group: String { SyncTopology.groupName(forService: self.rawValue) }
    }

    public let kind: Kind
    public let group: String
    public let configuration: ServiceConfiguration
    public let health = HealthStatus()
    public let address = ListeningAddress()
    private let logger: Logger

    public init(kind: Kind, group: String? = nil, configuration: ServiceConfiguration, logger: Logger) {
        self.kind = kind
        self.group = group ?? kind.group
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "service"] = "\(kind.rawValue)"
        logger[metadataKey: "consumer.group"] = "\(self.group)"
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
        guard !self.configuration.topology.queues(forGroup: self.group).isEmpty else {
            throw SyncError(.configuration, "consumer group '\(self.group)' receives no entity type in the topology")
        }
        let location = try StoreLocation(self.configuration.database)
        let (group, logger) = (self.group, self.logger)
        let store = try await ServiceRuntime.openStore(location, logger: logger) {
            try await location.openReplica(group: group, logger: logger)
        }
        let connection = try await ServiceRuntime.connect(self.configuration, role: self.kind.rawValue, logger: self.logger)
        var runnerConfiguration = ConsumerRunner.Configuration()
        runnerConfiguration.prefetch = self.configuration.prefetch
        // Prepared below, before the bootstrap; the runner need not do it again.
        runnerConfiguration.topologySetup = .alreadyPrepared
        runnerConfiguration.storeAvailabilityChanged = { [health] available in health.set(storeAvailable: available) }
        let runner = ConsumerRunner(group: self.group, topology: self.configuration.topology, broker: connection,
                                    store: store, configuration: runnerConfiguration, logger: self.logger)
        let query: any RegistrableRPCService = switch self.kind {
        case .userRPC: UserQueryService(store: store)
        case .orgRPC: OrgQueryService(store: store)
        }
        let queryName = switch self.kind {
        case .userRPC: Entitysync_V1_UserQuery.descriptor.fullyQualifiedService
        case .orgRPC: Entitysync_V1_OrgQuery.descriptor.fullyQualifiedService
        }
        let healthService = HealthService(status: self.health, services: [queryName, Entitysync_V1_SyncInfo.descriptor.fullyQualifiedService])
        let recorder = RPCCallRecorder(logger: self.logger)
        var routes = RPCRoutes()
        routes.unarySerialized(Grpc_Health_V1_Health.Method.Check.descriptor,
                                  recorder.observed(Grpc_Health_V1_Health.Method.Check.descriptor) { request, _ in
                                      try healthService.checkSerialized(request)
                                  })
        if self.kind == .userRPC, let reads = store as? any ImmediateReplicaReads {
            routes.unarySerialized(Entitysync_V1_UserQuery.Method.GetUser.descriptor,
                            recorder.observed(Entitysync_V1_UserQuery.Method.GetUser.descriptor, UserQueryService.immediateGetUser(reads)))
        }
        let syncInfo = SyncInfoService(group: self.group, topology: self.configuration.topology, store: store,
                                       connection: connection, runner: runner)
        // Answered by the server itself, without grpc-swift's router: callers wait on it after
        // every mutation they make.
        routes.unaryAsync(Entitysync_V1_SyncInfo.Method.WaitForVersion.descriptor,
                          around: recorder.around(Entitysync_V1_SyncInfo.Method.WaitForVersion.descriptor, token: nil)) {
            (request: Entitysync_V1_WaitForVersionRequest, _) in try await syncInfo.waitForVersion(request)
        }
        ServiceRuntime.protect(SyncInfoService.mutations, in: &routes, token: self.configuration.token, recorder: recorder)
        let (server, transport) = try ServiceRuntime.makeServer(self.configuration, services: [
            query,
            syncInfo,
            healthService,
        ], interceptors: [
            RPCMetricsInterceptor(recorder: recorder),
            BearerTokenInterceptor(token: self.configuration.token, protectedMethods: SyncInfoService.mutations),
        ], routes: routes, logger: self.logger)
        self.address.set(transport)
        let shutdown = ShutdownActions()
        shutdown.add { [health] in health.set(serving: false) }

        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                let serving = ServerRun(server, logger: self.logger)
                group.addTask { try await serving.wait() }
                // Queues first, so nothing published during the snapshot is missed.
                try await self.configuration.topology.prepare(forGroup: self.group, declare: self.configuration.declareTopology,
                                                              on: connection)
                do {
                    try await self.bootstrap(store: store)
                } catch {
                    await connection.close()
                    throw error
                }
                let consuming = Task { try await runner.run() }
                shutdown.add { consuming.cancel() }
                self.health.set(serving: true)
                // A SIGTERM that came during startup has closed the listener already: nothing
                // to announce then, and no reason to fail the clean stop that follows.
                let port = (try? await self.address.port()).map(String.init) ?? "closed"
                self.logger.info("consumer service ready", metadata: [
                    "grpc.port": "\(port)", "store": "\(location)",
                ])
                group.addTask {
                    // Deliveries in hand are applied and acked before queries stop and the connection closes.
                    let result = await consuming.result
                    serving.beginShutdown(grace: self.configuration.shutdownGrace)
                    await connection.close()
                    try result.get()
                }
            }
        } onGracefulShutdown: {
            self.logger.info("consumer service shutting down")
            shutdown.run()
        }
    }

    /// Loads the producer's snapshot when the store needs it (see `SnapshotBootstrap.loadIfNeeded`).
    /// Health stays NOT_SERVING meanwhile.
    private func bootstrap(store: any ReplicaStore) async throws {
        let kinds = Set(self.configuration.topology.queues(forGroup: self.group).map(\.kind))
        let bootstrap = SnapshotBootstrap(store: store, kinds: kinds, instance: self.configuration.instanceName,
                                          logger: self.logger)
        let producer = self.configuration.producer
        do {
            // SIGTERM while the producer is still unreachable must stop the process, not wait for it.
            _ = try await cancelWhenGracefulShutdown {
                try await bootstrap.loadIfNeeded(from: producer.map {
                    SnapshotBootstrap.Producer(name: "\($0)", stream: Self.snapshot(from: $0, tls: self.configuration.clientTLS),
                                               isTransient: Self.isTransient)
                })
            }
        } catch let error as RPCError {
            // Only a producer's answer is an RPCError.
            throw Self.refusal(error, producer: producer.map { "\($0)" } ?? "")
        }
    }

    /// The producer's `Snapshot` stream over gRPC. A stream has no deadline (a large history
    /// takes as long as it takes), so the connection is kept honest by keepalive PINGs instead: a
    /// producer that vanishes mid-stream without a word fails the stream within about 40 s, as
    /// a transient error the bootstrap retries, instead of holding the consumer's start forever.
    private static func snapshot(from producer: HostPort, tls: ClientTLS?) -> SnapshotBootstrap.SnapshotStream {
        { deliver in
            try await withGRPCClient(
                transport: .http2NIOPosix(target: .dns(host: producer.host, port: producer.port), transportSecurity: tls.transportSecurity,
                                          config: .defaults {
                                              $0.connection.keepalive = .init(time: .seconds(30), timeout: .seconds(10), allowWithoutCalls: false)
                                          })
            ) { client in
                try await Entitysync_V1_EntityAdmin.Client(wrapping: client).snapshot(Entitysync_V1_SnapshotRequest()) { response in
                    for try await change in response.messages { try await deliver(change) }
                }
            }
        }
    }

    /// Whether the producer may answer if asked again: it is not listening yet, restarting,
    /// overloaded, or its stream broke. An answer about the call itself (not served here, not
    /// allowed, malformed) will not change by retrying.
    private static func isTransient(_ error: any Error) -> Bool {
        // Store failures are classified by the loader itself; anything else that is not an answer
        // from the producer's side (a constraint, a bug) would fail the same way every time.
        guard let error = error as? RPCError else { return false }
        switch error.code {
        case .unavailable, .deadlineExceeded, .resourceExhausted, .aborted, .unknown, .internalError, .cancelled: return true
        default: return false
        }
    }

    private static func refusal(_ error: RPCError, producer: String) -> SyncError {
        let answer = "\(error.code): \(error.message)"
        return switch error.code {
        case .unimplemented:
            SyncError(.configuration, "the service at --producer \(producer) does not serve EntityAdmin.Snapshot (\(answer)): "
                      + "point --producer at the producer's gRPC address (its --listen), not at a consumer service")
        case .permissionDenied, .unauthenticated:
            SyncError(.configuration, "the producer at --producer \(producer) refused the snapshot (\(answer)): allow this "
                      + "consumer service to call EntityAdmin.Snapshot, or start it without --producer")
        default:
            SyncError(.configuration, "the producer at --producer \(producer) failed the snapshot with an answer retrying "
                      + "will not change (\(answer)): check --producer and the producer's log")
        }
    }
}
