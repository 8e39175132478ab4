/// How to reach the broker and how the connection behaves.
public struct AMQPConfiguration: Sendable {
    /// TLS settings for `amqps://` URLs.
    public struct TLS: Sendable, Hashable {
        /// PEM file of the CA(s) that must have signed the broker's certificate.
        public var caCertificatePath: String?
        /// PEM client certificate and key, for brokers that require client certificates.
        public var clientCertificatePath: String?
        public var clientKeyPath: String?
        /// Verify the broker's certificate chain and host name. Turn off only for local experiments.
        public var verifyPeer: Bool

        public init(caCertificatePath: String? = nil, clientCertificatePath: String? = nil,
                    clientKeyPath: String? = nil, verifyPeer: Bool = true) {
            self.caCertificatePath = caCertificatePath
            self.clientCertificatePath = clientCertificatePath
            self.clientKeyPath = clientKeyPath
            self.verifyPeer = verifyPeer
        }
    }

    /// The brokers (the nodes of a cluster), tried in order: the first connection tries each
    /// once, and every reconnect moves on to the next. Never empty.
    public private(set) var urls: [AMQPURL]
    /// The first broker; setting it replaces the whole list with this one broker.
    public var url: AMQPURL {
        get { self.urls[0] }
        set { self.urls = [newValue] }
    }
    public var tls: TLS
    /// Shown in the broker's management UI and `rabbitmqctl list_connections name`.
    public var connectionName: String
    public var heartbeat: Duration
    public var connectTimeout: Duration
    public var frameMax: Int
    /// Deadline for broker round trips (declare, consume, close) and for any single socket call.
    public var operationTimeout: Duration
    /// How long a publish may wait for its confirm, counted from the call, including time spent
    /// waiting for a connection or for room in the confirm window.
    public var publishTimeout: Duration
    /// Publishes sent and not yet confirmed, at most (pipelining depth).
    public var confirmWindow: Int
    /// Delay between reconnect attempts.
    public var reconnectBackoff: Backoff

    /// Reads `heartbeat` (s), `connection_timeout` (ms), `frame_max`, `cacertfile`, `certfile`,
    /// `keyfile`, `verify` (`verify_none` disables peer verification) and `connection_name` from
    /// the URL's query, as RabbitMQ's URI specification describes them.
    public init(url: AMQPURL, connectionName: String = "entity-sync") {
        self.urls = [url]
        self.connectionName = url.query["connection_name"] ?? connectionName
        self.heartbeat = .seconds(Int(url.query["heartbeat"] ?? "") ?? 10)
        self.connectTimeout = .milliseconds(Int(url.query["connection_timeout"] ?? "") ?? 10_000)
        self.frameMax = Int(url.query["frame_max"] ?? "") ?? 131_072
        self.operationTimeout = .seconds(30)
        self.publishTimeout = .seconds(30)
        self.confirmWindow = 512
        self.reconnectBackoff = Backoff()
        self.tls = TLS(caCertificatePath: url.query["cacertfile"], clientCertificatePath: url.query["certfile"],
                       clientKeyPath: url.query["keyfile"], verifyPeer: url.query["verify"] != "verify_none")
    }

    /// `urls`: one URL, or several separated by commas (the nodes of a cluster). Settings in the
    /// query (heartbeat, TLS files, …) are read from the first; every URL keeps its own host,
    /// port, credentials and vhost.
    public init(url urls: String, connectionName: String = "entity-sync") throws(AMQPError) {
        let parsed = try AMQPURL.list(urls)
        self.init(url: parsed[0], connectionName: connectionName)
        self.urls = parsed
    }

    /// Several brokers, tried in order; settings come from the first one's query.
    public init(urls: [AMQPURL], connectionName: String = "entity-sync") throws(AMQPError) {
        guard let first = urls.first else {
            throw AMQPError(.invalidURL, "no broker URL given; name at least one amqp:// or amqps:// URL")
        }
        self.init(url: first, connectionName: connectionName)
        self.urls = urls
    }
}
