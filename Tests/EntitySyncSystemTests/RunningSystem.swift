import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import EntitySyncTestSupport
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle
import Synchronization

/// A producer, two user-rpc and two org-rpc instances (each pair sharing its group's store),
/// running in-process on free ports in a private vhost, as one service group.
final class RunningSystem: Sendable {
    static let token = "test-token-0123456789"

    let host: TestVirtualHost
    let producer: ProducerService
    let userRPC: [ConsumerService]
    let orgRPC: [ConsumerService]
    /// How `withClient` reaches the services: TLS when they serve it.
    let clientTLS: ClientTLS?
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    private init(host: TestVirtualHost, producer: ProducerService, userRPC: [ConsumerService], orgRPC: [ConsumerService],
                 clientTLS: ClientTLS?, group: ServiceGroup, task: Task<Void, any Error>) {
        self.host = host
        self.clientTLS = clientTLS
        self.producer = producer
        self.userRPC = userRPC
        self.orgRPC = orgRPC
        self.group = group
        self.task = task
    }

    /// With `tls`, every service serves TLS only; `clientTLS` is how the tests' clients reach them.
    static func start(_ name: String, tls: ServerTLS? = nil, clientTLS: ClientTLS? = nil) async throws -> RunningSystem {
        let host = try TestVirtualHost(name)
        func configuration(_ service: String, store: String) -> ServiceConfiguration {
            var configuration = ServiceConfiguration(amqpURL: host.url, listen: HostPort(host: "127.0.0.1", port: 0),
                                                     database: host.path(store), token: Self.token, prefetch: 8, instanceName: service)
            configuration.tls = tls
            return configuration
        }
        let logger = Broker.logger(name)
        let producer = ProducerService(configuration: configuration("producer", store: "producer"), logger: logger)
        let userRPC = ["a", "b"].map {
            ConsumerService(kind: .userRPC, configuration: configuration("user-rpc-\($0)", store: "user-rpc"), logger: logger)
        }
        let orgRPC = ["a", "b"].map {
            ConsumerService(kind: .orgRPC, configuration: configuration("org-rpc-\($0)", store: "org-rpc"), logger: logger)
        }
        let services: [any Service] = [producer] + userRPC + orgRPC
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }, logger: logger))
        let failure = Mutex<String?>(nil)
        let task = Task {
            do {
                try await group.run()
            } catch {
                failure.withLock { $0 = "\(error)" }
                throw error
            }
        }
        let system = RunningSystem(host: host, producer: producer, userRPC: userRPC, orgRPC: orgRPC, clientTLS: clientTLS,
                                   group: group, task: task)
        try await eventually("every service SERVING") {
            if let failure = failure.withLock({ $0 }) { throw HarnessError("a service failed to start: \(failure)") }
            return producer.health.isServing && (userRPC + orgRPC).allSatisfy { $0.health.isServing }
        }
        return system
    }

    /// Stops everything gracefully and checks that it stopped without error.
    func stop() async throws {
        await self.group.triggerGracefulShutdown()
        try await self.task.value
        self.host.tearDown()
    }

    /// Runs `body` with a gRPC client over HTTP/2 connected to `service`'s port.
    func withClient<T: Sendable>(_ port: Int, _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        // The test certificates name localhost.
        let target: ResolvableTargets.DNS = .dns(host: self.clientTLS == nil ? "127.0.0.1" : "localhost", port: port)
        return try await withGRPCClient(transport: .http2NIOPosix(target: target, transportSecurity: self.clientTLS.transportSecurity)) { client in
            try await body(client)
        }
    }

    var authorized: Metadata {
        var metadata = Metadata()
        metadata.addString("Bearer \(Self.token)", forKey: "authorization")
        return metadata
    }
}

func userRequest(_ id: String, name: String = "Name", email: String? = nil) -> Entitysync_V1_CreateUserRequest {
    var request = Entitysync_V1_CreateUserRequest()
    request.user.id = id
    request.user.name = name
    request.user.email = email ?? "\(id)@example.com"
    return request
}

func waitRequest(_ type: Entitysync_V1_EntityType, _ id: String, _ version: UInt64, timeoutMs: UInt32 = 10_000) -> Entitysync_V1_WaitForVersionRequest {
    var request = Entitysync_V1_WaitForVersionRequest()
    request.entityType = type
    request.entityID = id
    request.version = version
    request.timeoutMs = timeoutMs
    return request
}

/// The status code of the RPC error `body` throws, or nil if it succeeds.
func statusCode(_ body: () async throws -> Void) async -> RPCError.Code? {
    do {
        try await body()
        return nil
    } catch let error as RPCError {
        return error.code
    } catch {
        return .unknown
    }
}
