/// An exchange to declare.
public struct ExchangeSpec: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable {
        case fanout, direct, topic, headers
    }
    public var name: String
    public var kind: Kind
    public var durable: Bool
    public var autoDelete: Bool
    public var arguments: AMQPTable

    public init(name: String, kind: Kind = .fanout, durable: Bool = true, autoDelete: Bool = false,
                arguments: AMQPTable = [:]) {
        self.name = name
        self.kind = kind
        self.durable = durable
        self.autoDelete = autoDelete
        self.arguments = arguments
    }
}

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

/// A queue to declare.
public struct QueueSpec: Sendable, Hashable {
    public var name: String
    public var durable: Bool
    public var exclusive: Bool
    public var autoDelete: Bool
    public var arguments: QueueArguments

    public init(name: String, durable: Bool = true, exclusive: Bool = false, autoDelete: Bool = false,
                arguments: QueueArguments = QueueArguments()) {
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.autoDelete = autoDelete
        self.arguments = arguments
    }
}

/// A binding of a queue to an exchange.
public struct BindingSpec: Sendable, Hashable {
    public var queue: String
    public var exchange: String
    public var routingKey: String
    public var arguments: AMQPTable

    public init(queue: String, exchange: String, routingKey: String = "", arguments: AMQPTable = [:]) {
        self.queue = queue
        self.exchange = exchange
        self.routingKey = routingKey
        self.arguments = arguments
    }
}

/// What a passive declare reports about an existing queue.
public struct QueueStatus: Sendable, Hashable {
    public var name: String
    /// Messages ready for delivery (not counting those delivered and not yet acknowledged).
    public var messageCount: Int
    public var consumerCount: Int
}

/// Everything a connection declared, replayed in this order after it reconnects.
struct RecordedTopology: Sendable {
    private(set) var exchanges: [ExchangeSpec] = []
    private(set) var queues: [QueueSpec] = []
    private(set) var bindings: [BindingSpec] = []

    mutating func record(_ exchange: ExchangeSpec) {
        self.exchanges.removeAll { $0.name == exchange.name }
        self.exchanges.append(exchange)
    }

    mutating func record(_ queue: QueueSpec) {
        self.queues.removeAll { $0.name == queue.name }
        self.queues.append(queue)
    }

    mutating func record(_ binding: BindingSpec) {
        if !self.bindings.contains(binding) { self.bindings.append(binding) }
    }

    mutating func forget(_ binding: BindingSpec) {
        self.bindings.removeAll { $0 == binding }
    }

    mutating func forgetQueue(named name: String) {
        self.queues.removeAll { $0.name == name }
        self.bindings.removeAll { $0.queue == name }
    }

    mutating func forgetExchange(named name: String) {
        self.exchanges.removeAll { $0.name == name }
        self.bindings.removeAll { $0.exchange == name }
    }

    func queue(named name: String) -> QueueSpec? { self.queues.first { $0.name == name } }
    func bindings(ofQueue name: String) -> [BindingSpec] { self.bindings.filter { $0.queue == name } }
}
