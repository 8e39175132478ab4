import AMQPClient
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncSQLite
import GRPCCore
import GRPCNIOTransportHTTP2
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
        let store = try SQLiteReplicaStore(path: self.configuration.databasePath)
        let connection = try await ServiceRuntime.connect(self.configuration, role: self.kind.rawValue, logger: self.logger)
        var runnerConfiguration = ConsumerRunner.Configuration()
        runnerConfiguration.prefetch = self.configuration.prefetch
        // Prepared below, before the bootstrap; the runner need not do it again.
        runnerConfiguration.topologySetup = .alreadyPrepared
        let runner = ConsumerRunner(group: self.group, topology: self.configuration.topology, connection: connection,
                                    store: store, configuration: runnerConfiguration, logger: self.logger)
        let query: any RegistrableRPCService = switch self.kind {
        case .userRPC: UserQueryService(store: store)
        case .orgRPC: OrgQueryService(store: store)
        }
        let queryName = switch self.kind {
        case .userRPC: Entitysync_V1_UserQuery.descriptor.fullyQualifiedService
        case .orgRPC: Entitysync_V1_OrgQuery.descriptor.fullyQualifiedService
        }
        let (server, transport) = ServiceRuntime.makeServer(self.configuration, services: [
            query,
            SyncInfoService(group: self.group, topology: self.configuration.topology, store: store, connection: connection,
                            runner: runner),
            HealthService(status: self.health, services: [queryName, Entitysync_V1_SyncInfo.descriptor.fullyQualifiedService]),
        ], interceptors: [
            RPCMetricsInterceptor(),
            BearerTokenInterceptor(token: self.configuration.token, protectedMethods: SyncInfoService.mutations),
        ])
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
                try await self.bootstrapIfEmpty(store: store)
                let consuming = Task { try await runner.run() }
                shutdown.add { consuming.cancel() }
                self.health.set(serving: true)
                let port = try await self.address.port()
                self.logger.info("consumer service ready", metadata: [
                    "grpc.port": "\(port)", "store": "\(self.configuration.databasePath)",
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

    /// A group that joins after the producer's history began has nothing of it in its new
    /// queues: load the producer's snapshot, then consume (versions make the overlap harmless).
    private func bootstrapIfEmpty(store: SQLiteReplicaStore) async throws {
        let statistics = try await store.statistics()
        let isEmpty = statistics.values.allSatisfy { $0.applied == 0 && $0.stale == 0 && $0.entities == 0 }
        guard isEmpty, let producer = self.configuration.producer else { return }
        let kinds = Set(self.configuration.topology.queues(forGroup: self.group).map(\.kind))
        self.logger.info("store is empty; loading the producer's snapshot", metadata: ["producer": "\(producer)"])
        let loaded = try await withGRPCClient(
            transport: .http2NIOPosix(target: .dns(host: producer.host, port: producer.port), transportSecurity: .plaintext)
        ) { client in
            let admin = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            return try await admin.snapshot(Entitysync_V1_SnapshotRequest()) { response in
                var count = 0
                for try await change in response.messages {
                    guard let kind = EntityKind(change.entityType), kinds.contains(kind) else { continue }
                    if case .success(let validated) = ChangeCodec.validate(change, expected: kind) {
                        _ = try await store.apply(validated)
                        count += 1
                    }
                }
                return count
            }
        }
        self.logger.info("snapshot loaded", metadata: ["entities": "\(loaded)"])
    }
}
