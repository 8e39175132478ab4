import Synchronization

/// A request from the async API to the connection thread. Every command that carries a
/// continuation is answered exactly once, whatever happens to the connection.
///
/// Broker operations (declare, bind, delete, …) are a kind of their own, `BrokerOperation`, so the
/// code that queues and runs them handles exactly those cases and the compiler checks it does.
enum Command: Sendable {
    case publish(PublishRequest)
    /// Publishes sent in this order; each still confirmed on its own.
    case publishBatch([PublishRequest])
    /// A broker round trip on the control channel, queued while disconnected until its deadline.
    case operation(BrokerOperation)
    case consume(ConsumerRegistration, Reply<Void>)
    case cancelConsumer(id: Int, Reply<Void>)
    /// Nobody reads the consumer's deliveries any more (its stream was dropped or its reading
    /// task cancelled): close its channel so the broker requeues what it holds, instead of
    /// redelivering to a consumer that can only hand everything back.
    case abandonConsumer(id: Int)
    case settle(Settlement, tag: UInt64, channel: ChannelRef, Reply<Void>)
    case status(Reply<ConnectionStatus>)
    case close(drainTimeout: Duration, Reply<Void>?)
}

/// A broker operation on the control channel and the caller waiting for its result.
enum BrokerOperation: Sendable {
    case declareExchange(ExchangeSpec, Reply<Void>)
    case declareQueue(QueueSpec, Reply<QueueStatus>)
    case bind(BindingSpec, Reply<Void>)
    case unbind(BindingSpec, Reply<Void>)
    case inspectQueue(String, Reply<QueueStatus>)
    case deleteQueue(String, ifEmpty: Bool, Reply<Int>)
    case deleteExchange(String, Reply<Void>)
    case purgeQueue(String, Reply<Int>)
}

// The spellings AMQPConnection uses (`.declareExchange(spec, reply)`), kept so the public API file
// does not change with the split.
extension Command {
    static func declareExchange(_ spec: ExchangeSpec, _ reply: Reply<Void>) -> Command {
        .operation(.declareExchange(spec, reply))
    }
    static func declareQueue(_ spec: QueueSpec, _ reply: Reply<QueueStatus>) -> Command {
        .operation(.declareQueue(spec, reply))
    }
    static func bind(_ spec: BindingSpec, _ reply: Reply<Void>) -> Command { .operation(.bind(spec, reply)) }
    static func unbind(_ spec: BindingSpec, _ reply: Reply<Void>) -> Command { .operation(.unbind(spec, reply)) }
    static func inspectQueue(_ name: String, _ reply: Reply<QueueStatus>) -> Command {
        .operation(.inspectQueue(name, reply))
    }
    static func deleteQueue(_ name: String, ifEmpty: Bool, _ reply: Reply<Int>) -> Command {
        .operation(.deleteQueue(name, ifEmpty: ifEmpty, reply))
    }
    static func deleteExchange(_ name: String, _ reply: Reply<Void>) -> Command {
        .operation(.deleteExchange(name, reply))
    }
    static func purgeQueue(_ name: String, _ reply: Reply<Int>) -> Command { .operation(.purgeQueue(name, reply)) }
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
    private let completion: PublishCompletion

    init(exchange: String, routingKey: String, mandatory: Bool, message: OutgoingMessage,
         deadline: ContinuousClock.Instant, completion: PublishCompletion) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.mandatory = mandatory
        self.message = message
        self.deadline = deadline
        self.completion = completion
    }

    /// Called exactly once, by the connection thread.
    func complete(_ result: Result<Void, AMQPError>) {
        switch self.completion {
        case .single(let reply): reply.resume(with: result.mapError { $0 as any Error })
        case .batch(let batch, let index): batch.complete(index, result)
        }
    }

    func fail(_ error: AMQPError) { self.complete(.failure(error)) }
}

enum PublishCompletion: Sendable {
    case single(Reply<Void>)
    case batch(BatchCompletion, index: Int)
}

/// Collects the outcome of every publish of a batch and answers the caller once all are known.
final class BatchCompletion: Sendable {
    private struct State {
        var results: [Result<Void, AMQPError>?]
        var remaining: Int
    }
    private let state: Mutex<State>
    private let ticket: PublishTicket

    init(count: Int, ticket: PublishTicket) {
        self.state = Mutex(State(results: Array(repeating: nil, count: count), remaining: count))
        self.ticket = ticket
    }

    func complete(_ index: Int, _ result: Result<Void, AMQPError>) {
        let finished = self.state.withLock { state -> [Result<Void, AMQPError>]? in
            guard state.results[index] == nil else { return nil }
            state.results[index] = result
            state.remaining -= 1
            return state.remaining == 0 ? state.results.map { $0 ?? .failure(ConnectionLoop.closedError) } : nil
        }
        if let finished { self.ticket.complete(finished) }
    }
}

struct ConsumerRegistration: Sendable {
    var id: Int
    var queue: String
    var prefetch: UInt16
    var continuation: DeliveryStream.Continuation
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
