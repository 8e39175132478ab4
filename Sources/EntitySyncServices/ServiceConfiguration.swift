import AMQPClient
import EntitySyncCore

/// A host and port, as written on the command line (`127.0.0.1:50051`, `[::1]:50051`, `:50051`).
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(_ text: String) throws(SyncError) {
        let invalid = SyncError(.configuration, "'\(text)' is not host:port (for example 127.0.0.1:50051 or [::1]:50051)")
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { throw invalid }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.init(host: host.isEmpty ? "0.0.0.0" : host, port: port)
    }

    public var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
}

/// Everything a service process needs; the `entity-sync` command fills it from flags and the
/// environment.
public struct ServiceConfiguration: Sendable {
    public var amqpURL: String
    public var listen: HostPort
    public var databasePath: String
    /// Mutations need `authorization: Bearer <token>` when set.
    public var token: String?
    public var topology: SyncTopology
    public var prefetch: UInt16
    /// The producer's gRPC address, for bootstrapping a consumer group whose store is empty.
    public var producer: HostPort?
    /// Name shown in logs, events and the broker's connection list.
    public var instanceName: String
    public var maxConcurrentStreams: Int
    public var maxRequestBytes: Int
    /// Once shutdown begins, how long calls in flight may take before every client connection
    /// is closed: a client that never goes away must not keep the process alive.
    public var shutdownGrace: Duration = .seconds(10)
    /// Consumers: declare the group's queues at startup (true), or only check that the producer
    /// declared them (false, for broker users without configure permission).
    public var declareTopology = true
    /// Producer: the outbox relay's settings. Its lease is derived from the broker connection's
    /// publish timeout unless set here.
    public var relay = OutboxRelay.Configuration()

    public init(amqpURL: String = "amqp://guest:guest@127.0.0.1:5672/", listen: HostPort, databasePath: String,
                token: String? = nil, topology: SyncTopology = SyncTopology(), prefetch: UInt16 = 64,
                producer: HostPort? = nil, instanceName: String, maxConcurrentStreams: Int = 100,
                maxRequestBytes: Int = 4 * 1024 * 1024) {
        self.amqpURL = amqpURL
        self.listen = listen
        self.databasePath = databasePath
        self.token = token
        self.topology = topology
        self.prefetch = prefetch
        self.producer = producer
        self.instanceName = instanceName
        self.maxConcurrentStreams = maxConcurrentStreams
        self.maxRequestBytes = maxRequestBytes
    }
}
