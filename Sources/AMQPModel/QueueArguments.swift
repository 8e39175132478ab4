/// The arguments RabbitMQ accepts on a queue, typed; anything else goes in `extra`.
public struct QueueArguments: Sendable, Hashable {
    public enum QueueType: String, Sendable, Hashable { case quorum, classic, stream }
    public enum Overflow: String, Sendable, Hashable {
        case dropHead = "drop-head", rejectPublish = "reject-publish", rejectPublishDLX = "reject-publish-dlx"
    }
    public enum DeadLetterStrategy: String, Sendable, Hashable {
        case atMostOnce = "at-most-once", atLeastOnce = "at-least-once"
    }

    public var queueType: QueueType?
    public var deadLetterExchange: String?
    public var deadLetterRoutingKey: String?
    /// Quorum queues: deliveries after which a message is dead-lettered instead of redelivered.
    public var deliveryLimit: Int?
    public var overflow: Overflow?
    public var deadLetterStrategy: DeadLetterStrategy?
    /// Milliseconds a message may wait in the queue before it expires (and is dead-lettered).
    public var messageTTL: Int?
    public var extra: AMQPTable

    public init(queueType: QueueType? = nil, deadLetterExchange: String? = nil, deadLetterRoutingKey: String? = nil,
                deliveryLimit: Int? = nil, overflow: Overflow? = nil, deadLetterStrategy: DeadLetterStrategy? = nil,
                messageTTL: Int? = nil, extra: AMQPTable = [:]) {
        self.queueType = queueType
        self.deadLetterExchange = deadLetterExchange
        self.deadLetterRoutingKey = deadLetterRoutingKey
        self.deliveryLimit = deliveryLimit
        self.overflow = overflow
        self.deadLetterStrategy = deadLetterStrategy
        self.messageTTL = messageTTL
        self.extra = extra
    }

    /// The field table sent with queue.declare.
    public var table: AMQPTable {
        var table = self.extra
        if let queueType { table["x-queue-type"] = .string(queueType.rawValue) }
        if let deadLetterExchange { table["x-dead-letter-exchange"] = .string(deadLetterExchange) }
        if let deadLetterRoutingKey { table["x-dead-letter-routing-key"] = .string(deadLetterRoutingKey) }
        if let deliveryLimit { table["x-delivery-limit"] = .int(Int64(deliveryLimit)) }
        if let overflow { table["x-overflow"] = .string(overflow.rawValue) }
        if let deadLetterStrategy { table["x-dead-letter-strategy"] = .string(deadLetterStrategy.rawValue) }
        if let messageTTL { table["x-message-ttl"] = .int(Int64(messageTTL)) }
        return table
    }
}
