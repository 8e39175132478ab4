import ArgumentParser
import EntitySyncCore
import EntitySyncServices
import Logging
import ServiceLifecycle

struct Producer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "producer",
        abstract: "Run the producer: owns users and groups, declares the topology, publishes every change (EntityAdmin API).")

    @OptionGroup var options: ServiceOptions

    @Option(help: "Bearer token required on mutations (env: ENTITY_SYNC_TOKEN; default: none, mutations open). Set one in production.")
    var token: String?

    func run() async throws {
        var configuration = try self.options.configuration(service: "producer", defaultPort: 50051)
        configuration.token = optionalSetting(self.token, "ENTITY_SYNC_TOKEN")
        let logger = try self.options.makeLogger("entity-sync.producer")
        if configuration.token == nil {
            logger.warning("no token configured: anyone who can reach the port may change entities (set --token or ENTITY_SYNC_TOKEN)")
        }
        try await runServices([ProducerService(configuration: configuration, logger: logger)],
                              metrics: try self.options.metricsAddress, logger: logger)
    }
}

func runConsumer(_ kind: ConsumerService.Kind, options: ServiceOptions, consumer: ConsumerOptions, defaultPort: Int) async throws {
    var configuration = try options.configuration(service: kind.rawValue, defaultPort: defaultPort)
    configuration.producer = try optionalSetting(consumer.producer, "ENTITY_SYNC_PRODUCER").map { try HostPort($0) }
    let prefetchText = setting(consumer.prefetch.map(String.init), "ENTITY_SYNC_PREFETCH", "4096")
    guard let prefetch = UInt16(prefetchText), prefetch > 0 else {
        throw ValidationError("--prefetch must be a number from 1 to 65535, not '\(prefetchText)'")
    }
    configuration.prefetch = prefetch
    configuration.token = optionalSetting(consumer.token, "ENTITY_SYNC_TOKEN")
    let declare = setting(consumer.declareTopology, "ENTITY_SYNC_DECLARE_TOPOLOGY", "true")
    guard declare == "true" || declare == "false" else {
        throw ValidationError("--declare-topology must be true or false, not '\(declare)'")
    }
    configuration.declareTopology = declare == "true"
    let logger = try options.makeLogger("entity-sync.\(kind.rawValue)")
    try await runServices([ConsumerService(kind: kind, configuration: configuration, logger: logger)],
                          metrics: try options.metricsAddress, logger: logger)
}

struct UserRPC: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user-rpc", abstract: "Run a user-rpc instance: consumes group consumer_user_rpc, serves UserQuery and SyncInfo.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var consumer: ConsumerOptions

    func run() async throws {
        try await runConsumer(.userRPC, options: self.options, consumer: self.consumer, defaultPort: 50052)
    }
}

struct OrgRPC: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "org-rpc", abstract: "Run an org-rpc instance: consumes group consumer_org_rpc, serves OrgQuery and SyncInfo.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var consumer: ConsumerOptions

    func run() async throws {
        try await runConsumer(.orgRPC, options: self.options, consumer: self.consumer, defaultPort: 50053)
    }
}

/// Runs services until SIGTERM or SIGINT, then shuts them down gracefully.
func runServices(_ services: [any Service], metrics: HostPort?, logger: Logger) async throws {
    var all = services
    if let metrics { all.append(MetricsServer.bootstrap(listen: metrics, logger: logger)) }
    let group = ServiceGroup(configuration: ServiceGroupConfiguration(
        services: all.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger
    ))
    try await group.run()
}
