/// A request from the async API to the connection thread. Every command that carries a
/// continuation is answered exactly once, whatever happens to the connection.
enum Command: Sendable {
    case publish(PublishRequest)
    case declareExchange(ExchangeSpec, Reply<Void>)
    case declareQueue(QueueSpec, Reply<QueueStatus>)
    case bind(BindingSpec, Reply<Void>)
    case inspectQueue(String, Reply<QueueStatus>)
    case deleteQueue(String, Reply<Int>)
    case deleteExchange(String, Reply<Void>)
    case purgeQueue(String, Reply<Int>)
    case consume(ConsumerRegistration, Reply<Void>)
    case cancelConsumer(id: Int, Reply<Void>)
    case settle(Settlement, tag: UInt64, channel: ChannelRef, Reply<Void>)
    case status(Reply<ConnectionStatus>)
    case close(drainTimeout: Duration, Reply<Void>?)
}

typealias Reply<Value> = CheckedContinuation<Value, any Error>

/// A class, not a struct: it is handed from the caller to the send queue to the confirm tracker,
/// and each hand-off of a struct with several strings retained every one of them.
final class PublishRequest: Sendable {
    let exchange: String
    let routingKey: String
    let mandatory: Bool
    let message: OutgoingMessage
    let deadline: ContinuousClock.Instant
    let reply: Reply<Void>

    init(exchange: String, routingKey: String, mandatory: Bool, message: OutgoingMessage,
         deadline: ContinuousClock.Instant, reply: Reply<Void>) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.mandatory = mandatory
        self.message = message
        self.deadline = deadline
        self.reply = reply
    }
}

struct ConsumerRegistration: Sendable {
    var id: Int
    var queue: String
    var prefetch: UInt16
    var continuation: AsyncStream<Delivery>.Continuation
}

/// A point-in-time view of the connection, for health checks and tests.
public struct ConnectionStatus: Sendable, Hashable {
    /// Whether a broker connection is established right now.
    public var isConnected: Bool
    /// Broker connections established so far; grows by one with each recovery.
    public var connectionCount: Int
    /// Publishes sent and awaiting a confirm.
    public var unconfirmedPublishes: Int
    /// Publishes waiting for a connection or for room in the confirm window.
    public var queuedPublishes: Int
    /// True while the broker blocks publishers (memory or disk alarm).
    public var isBlocked: Bool
    /// Consumers subscribed right now.
    public var activeConsumers: Int
    /// The last connection error, if the connection is down.
    public var lastError: String?
}
