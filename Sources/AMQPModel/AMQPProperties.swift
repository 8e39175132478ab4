/// Properties of a message; what the broker and consumers see besides the body.
public struct AMQPProperties: Sendable, Hashable {
    public var contentType: String?
    public var contentEncoding: String?
    public var messageID: String?
    public var correlationID: String?
    public var type: String?
    public var appID: String?
    /// Seconds since 1970, as AMQP carries it.
    public var timestamp: UInt64?
    /// Per-message TTL in milliseconds, as a decimal string (AMQP's representation).
    public var expiration: String?
    /// 2 = persistent (survives a broker restart in a durable queue), 1 = transient.
    public var deliveryMode: UInt8?
    public var headers: AMQPTable

    public init(contentType: String? = nil, contentEncoding: String? = nil, messageID: String? = nil,
                correlationID: String? = nil, type: String? = nil, appID: String? = nil,
                timestamp: UInt64? = nil, expiration: String? = nil, deliveryMode: UInt8? = nil,
                headers: AMQPTable = [:]) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.messageID = messageID
        self.correlationID = correlationID
        self.type = type
        self.appID = appID
        self.timestamp = timestamp
        self.expiration = expiration
        self.deliveryMode = deliveryMode
        self.headers = headers
    }
}
