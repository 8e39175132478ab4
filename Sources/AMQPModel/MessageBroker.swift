/// What the sync core needs of a message broker: declare and inspect, publish with confirms,
/// consume with manual acknowledgement. `AMQPConnection` speaks it to RabbitMQ; an in-memory
/// broker (module `AMQPTesting`) speaks it in tests, so every rule above it runs without a socket.
///
/// Implementations follow AMQP 0-9-1 as RabbitMQ does: errors are `AMQPError`s with the codes
/// RabbitMQ's replies map to (`.notFound`, `.preconditionFailed`, `.accessRefused`, ...).
public protocol MessageBroker: Sendable {
    /// The longest a publish waits for its confirm before failing with `.confirmTimeout`.
    var publishTimeout: Duration { get }

    /// Declares an exchange (idempotent).
    func declare(_ exchange: ExchangeSpec) async throws
    /// Declares a queue (idempotent); `.preconditionFailed` if it exists with other arguments.
    @discardableResult
    func declare(_ queue: QueueSpec) async throws -> QueueStatus
    /// Binds a queue to an exchange (idempotent).
    func bind(_ binding: BindingSpec) async throws
    /// Removes a binding (idempotent).
    func unbind(_ binding: BindingSpec) async throws
    /// Message and consumer counts of an existing queue; `.notFound` if it is missing.
    func queueStatus(_ name: String) async throws -> QueueStatus
    /// Deletes a queue and returns how many messages it held; with `ifEmpty`, a queue holding
    /// messages is left alone and the call fails with `.preconditionFailed`.
    @discardableResult
    func deleteQueue(_ name: String, ifEmpty: Bool) async throws -> Int
    /// Publishes one message and returns once the broker confirmed it (`.unroutable` if mandatory
    /// and no queue took it, `.nacked`, `.confirmTimeout`, `.connectionLost`).
    func publish(_ message: OutgoingMessage, exchange: String, routingKey: String, mandatory: Bool) async throws
    /// Publishes every message in order and returns each one's outcome once all are known.
    func publish(_ batch: [PublishItem]) async -> [Result<Void, AMQPError>]
    /// Hands every message over for publishing before it returns, in order and behind every
    /// batch handed over before, without waiting for their confirms: a caller can hand over the
    /// next batch while the broker confirms this one, and await each ticket in turn.
    func submit(_ batch: [PublishItem]) -> PublishTicket
    /// Consumes `queue` with manual acknowledgement and at most `prefetch` unsettled deliveries.
    /// A consumer's deliveries come over one channel incarnation at a time, in order: once one
    /// arrives on a new `ChannelRef`, the old incarnation is gone (its stream drops what it
    /// still buffers from it, see `DeliveryStream`).
    func consume(queue: String, prefetch: UInt16) async throws -> BrokerConsumer
}
