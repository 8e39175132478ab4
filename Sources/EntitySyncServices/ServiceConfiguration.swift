import AMQPClient
import EntitySyncCore
import HTTP2RPC

/// Everything a service process needs; the `entity-sync` command fills it from flags and the
/// environment.
public struct ServiceConfiguration: Sendable {
    public var amqpURL: String
    public var listen: HostPort
    public var database: String
    /// Mutations need `authorization: Bearer <token>` when set.
    public var token: String?
    public var topology: SyncTopology
    public var prefetch: UInt16
    /// The producer's gRPC address, for bootstrapping a consumer group whose store is empty.
    public var producer: HostPort?
    /// Name shown in logs, events and the broker's connection list.
    public var instanceName: String
    public var maxConcurrentStreams: Int
    /// Event-loop threads of the gRPC server, each owning the connections it accepts; nil: NIO's
    /// shared group, one loop per core (`defaultRPCThreads`).
    public var rpcThreads: Int?
    /// How many loops serve gRPC when `rpcThreads` is nil.
    public static var defaultRPCThreads: Int { RPCServerConfiguration.defaultLoopThreads }
    public var maxRequestBytes: Int
    /// TLS on the gRPC listener; plaintext h2c when nil.
    public var tls: ServerTLS?
    /// TLS for this process's calls to other services (a consumer's snapshot call to
    /// `producer`); plaintext when nil.
    public var clientTLS: ClientTLS?
    /// Once shutdown begins, how long calls in flight may take before every client connection
    /// is closed: a client that never goes away must not keep the process alive.
    public var shutdownGrace: Duration = .seconds(10)
    /// Consumers: declare the group's queues at startup (true), or only check that the producer
    /// declared them (false, for broker users without configure permission).
    public var declareTopology = true
    /// How long a publish may wait for the broker's confirm before it fails and is retried
    /// (from the outbox, or by the consumer that forwards a message). Short, so that the relay
    /// lease derived from it is short too.
    public var publishTimeout: Duration = .seconds(10)
    /// Producer: the outbox relay's settings. Its lease is the publish timeout plus a 5 s margin
    /// unless set here: the longest a SIGKILLed producer's relay keeps another from taking over.
    public var relay: OutboxRelay.Configuration = {
        var relay = OutboxRelay.Configuration()
        relay.leaseMargin = .seconds(5)
        return relay
    }()

    public init(amqpURL: String = "amqp://guest:guest@127.0.0.1:5672/", listen: HostPort, database: String,
                token: String? = nil, topology: SyncTopology = SyncTopology(), prefetch: UInt16 = 4096,
                producer: HostPort? = nil, instanceName: String, maxConcurrentStreams: Int = 100,
                maxRequestBytes: Int = 4 * 1024 * 1024) {
        self.amqpURL = amqpURL
        self.listen = listen
        self.database = database
        self.token = token
        self.topology = topology
        self.prefetch = prefetch
        self.producer = producer
        self.instanceName = instanceName
        self.maxConcurrentStreams = maxConcurrentStreams
        self.maxRequestBytes = maxRequestBytes
    }
}
