import Foundation
import Logging
import Synchronization

/// One long-lived connection to RabbitMQ with confirmed publishing, consumers with manual
/// acknowledgement, and automatic recovery.
///
/// All librabbitmq work happens on a thread owned by the connection; these methods only post to it
/// and await the answer, so they are safe to call from any task. After a connection loss it
/// reconnects with capped exponential backoff, re-declares every exchange, queue and binding
/// declared through it, and re-subscribes its consumers.
public final class AMQPConnection: MessageBroker {
    public let configuration: AMQPConfiguration
    private let mailbox: Mailbox
    private let nextConsumerID = Atomic<Int>(1)

    private init(configuration: AMQPConfiguration, mailbox: Mailbox) {
        self.configuration = configuration
        self.mailbox = mailbox
    }

    deinit {
        // A connection dropped without close() must not leave its thread and socket behind.
        self.mailbox.post(.close(drainTimeout: .zero, nil))
    }

    /// Connects and logs in; throws a descriptive `AMQPError` if the first attempt fails.
    public static func connect(_ configuration: AMQPConfiguration, logger: Logger) async throws -> AMQPConnection {
        let mailbox = try Mailbox()
        try await withCheckedThrowingContinuation { (reply: Reply<Void>) in
            let thread = Thread {
                let loop = ConnectionLoop(configuration: configuration, mailbox: mailbox, logger: logger)
                loop.run(initial: reply)
            }
            thread.name = "amqp-connection"
            thread.start()
        }
        return AMQPConnection(configuration: configuration, mailbox: mailbox)
    }

    /// Declares an exchange (idempotent) and remembers it for recovery.
    public func declare(_ exchange: ExchangeSpec) async throws {
        try await self.call { .declareExchange(exchange, $0) }
    }

    /// Declares a queue (idempotent) and remembers it for recovery. Fails with `.preconditionFailed`,
    /// naming the argument, if the queue exists with other arguments.
    @discardableResult
    public func declare(_ queue: QueueSpec) async throws -> QueueStatus {
        try await self.call { .declareQueue(queue, $0) }
    }

    /// Binds a queue to an exchange (idempotent) and remembers it for recovery.
    public func bind(_ binding: BindingSpec) async throws {
        try await self.call { .bind(binding, $0) }
    }

    /// Removes a binding (idempotent) and forgets it for recovery.
    public func unbind(_ binding: BindingSpec) async throws {
        try await self.call { .unbind(binding, $0) }
    }

    /// Message and consumer counts of an existing queue (passive declare); `.notFound` if it is missing.
    public func queueStatus(_ name: String) async throws -> QueueStatus {
        try await self.call { .inspectQueue(name, $0) }
    }

    /// Deletes a queue; returns how many messages it held. With `ifEmpty`, a queue that holds
    /// messages is left alone and the call fails with `.preconditionFailed` (classic queues only:
    /// quorum queues refuse the flag with NOT_IMPLEMENTED).
    @discardableResult
    public func deleteQueue(_ name: String, ifEmpty: Bool = false) async throws -> Int {
        try await self.call { .deleteQueue(name, ifEmpty: ifEmpty, $0) }
    }

    /// Removes every ready message from a queue; returns how many.
    @discardableResult
    public func purgeQueue(_ name: String) async throws -> Int {
        try await self.call { .purgeQueue(name, $0) }
    }

    public func deleteExchange(_ name: String) async throws {
        try await self.call { .deleteExchange(name, $0) }
    }

    /// Publishes and returns once the broker has confirmed the message. Throws `.unroutable` if a
    /// mandatory message reached no queue, `.nacked`, `.confirmTimeout`, or `.connectionLost`
    /// (retryable: the message may or may not have been delivered). Concurrent calls are pipelined
    /// up to `configuration.confirmWindow` unconfirmed messages, in the order they are made.
    public func publish(_ message: OutgoingMessage, exchange: String, routingKey: String = "",
                        mandatory: Bool = true) async throws {
        let deadline = ContinuousClock.now + self.configuration.publishTimeout
        try await self.call { reply in
            .publish(PublishRequest(exchange: exchange, routingKey: routingKey, mandatory: mandatory, message: message,
                                    deadline: deadline, completion: .single(reply)))
        }
    }

    /// Publishes every message, sent in the given order and pipelined within the confirm window,
    /// and returns each one's outcome (same errors as `publish`) once all are known.
    public func publish(_ batch: [PublishItem]) async -> [Result<Void, AMQPError>] {
        await self.submit(batch).outcomes()
    }

    /// Posts the batch to the connection thread before returning (the mailbox keeps the order
    /// of posts), so batches submitted one after another are sent in that order.
    public func submit(_ batch: [PublishItem]) -> PublishTicket {
        guard !batch.isEmpty else { return PublishTicket(results: []) }
        let deadline = ContinuousClock.now + self.configuration.publishTimeout
        let ticket = PublishTicket()
        let completion = BatchCompletion(count: batch.count, ticket: ticket)
        let requests = batch.enumerated().map { index, item in
            PublishRequest(exchange: item.exchange, routingKey: item.routingKey, mandatory: item.mandatory,
                           message: item.message, deadline: deadline, completion: .batch(completion, index: index))
        }
        if !self.mailbox.post(.publishBatch(requests)) {
            for request in requests { request.fail(ConnectionLoop.closedError) }
        }
        return ticket
    }

    /// Starts consuming `queue` with manual acknowledgement and at most `prefetch` unsettled
    /// deliveries. Throws if the first subscription fails (e.g. `.notFound`); later losses are
    /// recovered by re-subscribing.
    public func consume(queue: String, prefetch: UInt16 = 32) async throws -> AMQPConsumer {
        guard prefetch > 0 else {
            throw AMQPError(.invalidArgument, "prefetch must be at least 1 (0 would mean unlimited deliveries in memory)")
        }
        // Ids only name a consumer in commands (never reused, so a late cancel cannot hit another
        // consumer); the connection thread gives each a channel and reuses channels once closed.
        let id = self.nextConsumerID.wrappingAdd(1, ordering: .relaxed).oldValue
        let (stream, continuation) = DeliveryStream.makeStream()
        let mailbox = self.mailbox
        continuation.onTermination = { termination in
            if case .cancelled = termination { _ = mailbox.post(.abandonConsumer(id: id)) }
        }
        let registration = ConsumerRegistration(id: id, queue: queue, prefetch: prefetch, continuation: continuation)
        try await self.call { .consume(registration, $0) }
        return BrokerConsumer(queue: queue, deliveries: stream) {
            _ = try? await withCheckedThrowingContinuation { (reply: Reply<Void>) in
                if !mailbox.post(.cancelConsumer(id: id, reply)) { reply.resume() }
            }
        }
    }

    public var publishTimeout: Duration { self.configuration.publishTimeout }

    /// The connection's current state.
    public func status() async throws -> ConnectionStatus {
        try await self.call { .status($0) }
    }

    /// Closes gracefully: stops consumers, lets handlers settle what they received, waits for
    /// outstanding confirms (all bounded by `drainTimeout`), then closes the connection.
    public func close(drainTimeout: Duration = .seconds(10)) async {
        _ = try? await withCheckedThrowingContinuation { (reply: Reply<Void>) in
            if !self.mailbox.post(.close(drainTimeout: drainTimeout, reply)) { reply.resume() }
        }
    }

    private func call<Value: Sendable>(_ make: (Reply<Value>) -> Command) async throws -> Value {
        try await withCheckedThrowingContinuation { (reply: Reply<Value>) in
            let command = make(reply)
            if !self.mailbox.post(command) {
                reply.resume(throwing: ConnectionLoop.closedError)
            }
        }
    }
}

/// A subscription to one queue of an `AMQPConnection`.
public typealias AMQPConsumer = BrokerConsumer
