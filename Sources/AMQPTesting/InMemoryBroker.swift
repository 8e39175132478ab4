import AMQPModel
import Synchronization

/// RabbitMQ's queueing rules in memory, for tests that should take milliseconds: durable
/// declarations with argument checks, fanout/direct/default-exchange routing, mandatory publishes,
/// per-queue FIFO with prefetch and round-robin over competing consumers, ack (also multiple) and
/// reject, the redelivered flag, quorum delivery counts and limits, dead-lettering (with
/// `x-death`), and per-message and per-queue TTL.
///
/// Faults a real broker deals are injected by hand: `dropConnection()` requeues everything
/// unsettled and refuses late settlements, as a lost connection does; `failNextPublishes` makes
/// publishes fail. Not modelled: topic and headers exchanges, max-length, priorities, streams,
/// permissions, and publish flow control. Two differences to know: deleting a queue ends its
/// consumers' streams here, where `AMQPConnection` re-declares the queue and re-subscribes; and
/// `x-delivery-count` counts every return of a message (RabbitMQ up to 4.2; 4.3 counts only rejects).
public final class InMemoryBroker: MessageBroker, DeliverySettler {
    public let publishTimeout: Duration
    private let state = Mutex(State())

    /// A broker with nothing declared.
    public init(publishTimeout: Duration = .seconds(5)) {
        self.publishTimeout = publishTimeout
    }

    /// What happens to the next publishes, in order, before any is routed.
    public enum PublishFault: Sendable {
        /// The publish fails with the error and reaches no queue (a nack, a refused connection).
        case refuse(AMQPError)
        /// The message reaches its queues, but the publisher hears the error (a connection lost
        /// after the broker took the message and before its confirm arrived).
        case deliverThenFail(AMQPError)
    }

    /// A message in a queue, as a test sees it.
    public struct QueuedMessage: Sendable {
        public var body: [UInt8]
        public var properties: AMQPProperties
        public var exchange: String
        public var routingKey: String
        public var redelivered: Bool
    }

    // MARK: MessageBroker

    public func declare(_ exchange: ExchangeSpec) async throws {
        try self.state.withLock { state in
            guard exchange.kind == .fanout || exchange.kind == .direct else {
                throw AMQPError(.invalidArgument, "InMemoryBroker models fanout and direct exchanges, not \(exchange.kind)")
            }
            if let existing = state.exchanges[exchange.name], existing != exchange {
                throw AMQPError(.preconditionFailed, "exchange '\(exchange.name)' exists with other settings", replyCode: 406)
            }
            state.exchanges[exchange.name] = exchange
        }
    }

    @discardableResult
    public func declare(_ queue: QueueSpec) async throws -> QueueStatus {
        try self.state.withLock { state in
            if let existing = state.queues[queue.name] {
                guard existing.spec == queue else {
                    throw AMQPError(.preconditionFailed, "queue '\(queue.name)' exists with other arguments "
                                    + "(declared \(existing.spec.arguments.table), asked \(queue.arguments.table))", replyCode: 406)
                }
            } else {
                state.queues[queue.name] = QueueState(spec: queue)
            }
            return try state.status(of: queue.name)
        }
    }

    public func bind(_ binding: BindingSpec) async throws {
        try self.state.withLock { state in
            guard state.queues[binding.queue] != nil else {
                throw AMQPError(.notFound, "no queue '\(binding.queue)' to bind", replyCode: 404)
            }
            guard state.exchanges[binding.exchange] != nil else {
                throw AMQPError(.notFound, "no exchange '\(binding.exchange)' to bind to", replyCode: 404)
            }
            state.bindings.insert(binding)
        }
    }

    public func unbind(_ binding: BindingSpec) async throws {
        _ = self.state.withLock { $0.bindings.remove(binding) }
    }

    public func queueStatus(_ name: String) async throws -> QueueStatus {
        try self.state.withLock { try $0.status(of: name) }
    }

    @discardableResult
    public func deleteQueue(_ name: String, ifEmpty: Bool) async throws -> Int {
        let (count, ended) = try self.state.withLock { state -> (Int, [DeliveryStream.Continuation]) in
            guard let queue = state.queues[name] else { return (0, []) }
            let unsettled = state.consumers.values.filter { $0.queue == name }.reduce(0) { $0 + $1.unsettled.count }
            if ifEmpty, !queue.ready.isEmpty || unsettled > 0 {
                throw AMQPError(.preconditionFailed, "queue '\(name)' is not empty", replyCode: 406)
            }
            state.queues[name] = nil
            state.bindings = state.bindings.filter { $0.queue != name }
            // The broker cancels the consumers of a deleted queue.
            var ended: [DeliveryStream.Continuation] = []
            for (id, consumer) in state.consumers where consumer.queue == name {
                ended.append(consumer.continuation)
                state.consumers[id] = nil
            }
            return (queue.ready.count, ended)
        }
        for continuation in ended { continuation.finish() }
        return count
    }

    public func publish(_ message: OutgoingMessage, exchange: String, routingKey: String, mandatory: Bool) async throws {
        let item = PublishItem(message, exchange: exchange, routingKey: routingKey, mandatory: mandatory)
        if case .failure(let error) = await self.publish([item])[0] { throw error }
    }

    public func publish(_ batch: [PublishItem]) async -> [Result<Void, AMQPError>] {
        await self.submit(batch).outcomes()
    }

    /// Settles every publish at once: the ticket's outcomes are known when it is returned.
    public func submit(_ batch: [PublishItem]) -> PublishTicket {
        let results = self.state.withLock { state in
            let results = batch.map { state.publish($0) }
            state.dispatchPending(settler: self)
            return results
        }
        self.scheduleExpiry()
        return PublishTicket(results: results)
    }

    public func consume(queue: String, prefetch: UInt16) async throws -> BrokerConsumer {
        guard prefetch > 0 else {
            throw AMQPError(.invalidArgument, "prefetch must be at least 1 (0 would mean unlimited deliveries in memory)")
        }
        let (stream, continuation) = DeliveryStream.makeStream()
        let id = try self.state.withLock { state -> Int in
            guard state.queues[queue] != nil else {
                throw AMQPError(.notFound, "no queue '\(queue)' in vhost '/'", replyCode: 404)
            }
            let id = state.nextConsumerID
            state.nextConsumerID += 1
            state.consumers[id] = ConsumerState(queue: queue, prefetch: Int(prefetch), continuation: continuation,
                                                epoch: state.epoch)
            state.queues[queue]?.consumerOrder.append(id)
            return id
        }
        continuation.onTermination = { [weak self] termination in
            // Nobody reads any more: what the consumer holds goes back, as when its channel closes.
            if case .cancelled = termination { self?.abandon(consumer: id) }
        }
        self.state.withLock { state in state.dispatch(queue: queue, settler: self) }
        self.scheduleExpiry()
        return BrokerConsumer(queue: queue, deliveries: stream) { [weak self] in self?.cancel(consumer: id) }
    }

    // MARK: DeliverySettler

    public func settle(_ settlement: Settlement, tag: UInt64, channel: ChannelRef) async throws {
        try self.state.withLock { state in
            let consumerID = Int(channel.number)
            guard let holder = state.consumers[consumerID], channel.epoch == holder.epoch else {
                throw AMQPError(.deliveryExpired, "the channel this message arrived on is closed; the broker redelivers the message")
            }
            guard holder.unsettled.contains(where: { $0.tag == tag }) else {
                // RabbitMQ answers a settlement of an unknown tag (settled twice) by closing the
                // channel: every delivery it held goes back, and their settlements fail too.
                for held in holder.unsettled { state.giveBack(held.message, to: holder.queue) }
                state.epoch += 1
                state.consumers[consumerID]?.unsettled.removeAll()
                state.consumers[consumerID]?.epoch = state.epoch
                state.dispatch(queue: holder.queue, settler: self)
                throw AMQPError(.channelClosed, "PRECONDITION_FAILED - unknown delivery tag \(tag)", replyCode: 406)
            }
            guard var consumer = state.consumers[consumerID] else { return }
            switch settlement {
            case .ack(let multiple):
                consumer.unsettled.removeAll { multiple ? $0.tag <= tag : $0.tag == tag }
                state.consumers[consumerID] = consumer
            case .reject(let requeue):
                guard let index = consumer.unsettled.firstIndex(where: { $0.tag == tag }) else { return }
                let message = consumer.unsettled.remove(at: index).message
                state.consumers[consumerID] = consumer
                if requeue {
                    state.giveBack(message, to: consumer.queue)
                } else {
                    state.deadLetter(message, from: consumer.queue, reason: "rejected")
                }
            }
            if consumer.cancelled, consumer.unsettled.isEmpty { state.consumers[consumerID] = nil }
            state.dispatch(queue: consumer.queue, settler: self)
        }
        self.scheduleExpiry()
    }

    // MARK: Faults and inspection

    /// Acts as a lost connection that recovered at once: every unsettled delivery goes back to its
    /// queue marked redelivered, its late ack or reject fails with `.deliveryExpired`, and the
    /// consumers (re-subscribed) receive them again.
    public func dropConnection() {
        self.state.withLock { state in
            state.epoch += 1
            for (id, consumer) in state.consumers {
                for held in consumer.unsettled { state.giveBack(held.message, to: consumer.queue) }
                if consumer.cancelled {
                    state.consumers[id] = nil
                } else {
                    state.consumers[id]?.unsettled.removeAll()
                    state.consumers[id]?.epoch = state.epoch
                }
            }
            for name in state.queues.keys { state.dispatch(queue: name, settler: self) }
        }
    }

    /// Applies `faults` to the next publishes (to `exchange` only, if given), one each, before
    /// routing them.
    public func failNextPublishes(_ faults: [PublishFault], toExchange exchange: String? = nil) {
        self.state.withLock { $0.publishFaults.append(contentsOf: faults.map { (exchange, $0) }) }
    }

    /// The ready messages of `queue`, head first (not those delivered and unsettled).
    public func messages(in queue: String) -> [QueuedMessage] {
        self.state.withLock { state in
            (state.queues[queue]?.ready ?? []).map {
                QueuedMessage(body: $0.body, properties: $0.properties, exchange: $0.exchange, routingKey: $0.routingKey,
                              redelivered: $0.redelivered)
            }
        }
    }

    /// Deliveries handed to consumers of `queue` and not yet settled.
    public func unsettledCount(in queue: String) -> Int {
        self.state.withLock { state in
            state.consumers.values.filter { $0.queue == queue }.reduce(0) { $0 + $1.unsettled.count }
        }
    }

    /// Whether the queue exists.
    public func hasQueue(_ name: String) -> Bool {
        self.state.withLock { $0.queues[name] != nil }
    }

    /// The bindings now in place.
    public var bindings: Set<BindingSpec> {
        self.state.withLock { $0.bindings }
    }

    /// Messages dead-lettered to an exchange that routed them nowhere, and so dropped.
    public var droppedCount: Int {
        self.state.withLock { $0.dropped }
    }

    // MARK: Internals

    private func cancel(consumer id: Int) {
        let continuation = self.state.withLock { state -> DeliveryStream.Continuation? in
            guard var consumer = state.consumers[id], !consumer.cancelled else { return nil }
            consumer.cancelled = true
            state.queues[consumer.queue]?.consumerOrder.removeAll { $0 == id }
            state.consumers[id] = consumer.unsettled.isEmpty ? nil : consumer
            return consumer.continuation
        }
        continuation?.finish()
    }

    private func abandon(consumer id: Int) {
        self.state.withLock { state in
            guard let consumer = state.consumers.removeValue(forKey: id) else { return }
            state.queues[consumer.queue]?.consumerOrder.removeAll { $0 == id }
            for held in consumer.unsettled { state.giveBack(held.message, to: consumer.queue) }
            state.dispatch(queue: consumer.queue, settler: self)
        }
    }

    /// Wakes when the earliest message with a TTL is due and dead-letters what expired; each
    /// wake schedules the next, so a broker with nothing to expire has no task.
    private func scheduleExpiry() {
        let due = self.state.withLock { state -> ContinuousClock.Instant? in
            guard let next = state.nextExpiry(), state.expiryWake.map({ next < $0 }) ?? true else { return nil }
            state.expiryWake = next
            return next
        }
        guard let due else { return }
        Task { [weak self] in
            try? await Task.sleep(until: due, clock: .continuous)
            guard let self else { return }
            self.state.withLock { state in
                state.expiryWake = nil
                state.expire(now: .now, settler: self)
            }
            self.scheduleExpiry()
        }
    }
}

extension InMemoryBroker {
    struct StoredMessage {
        var body: [UInt8]
        var properties: AMQPProperties
        var exchange: String
        var routingKey: String
        /// Position in its queue: a returned message goes back to where it was, ahead of later ones.
        var sequence: UInt64
        var redelivered = false
        /// Times it was returned to its queue (quorum queues' `x-delivery-count`).
        var returns = 0
        var expiresAt: ContinuousClock.Instant?
    }

    struct QueueState {
        var spec: QueueSpec
        var ready: [StoredMessage] = []
        /// Consumers in subscription order; the one served next goes to the back.
        var consumerOrder: [Int] = []
    }

    struct ConsumerState {
        var queue: String
        var prefetch: Int
        var continuation: DeliveryStream.Continuation
        var unsettled: [(tag: UInt64, message: StoredMessage)] = []
        var cancelled = false
        /// The incarnation of the consumer's channel: a new one after each (simulated) close.
        var epoch: UInt64
    }

    struct State {
        var exchanges: [String: ExchangeSpec] = [:]
        var queues: [String: QueueState] = [:]
        var bindings: Set<BindingSpec> = []
        var consumers: [Int: ConsumerState] = [:]
        var nextConsumerID = 1
        var nextTag: UInt64 = 1
        var nextSequence: UInt64 = 1
        /// The last channel incarnation handed out; deliveries carry their consumer's.
        var epoch: UInt64 = 1
        var publishFaults: [(exchange: String?, fault: PublishFault)] = []
        var expiryWake: ContinuousClock.Instant?
        var dropped = 0
        /// Queues that received messages since the last dispatch.
        var pendingDispatch: Set<String> = []

        func status(of name: String) throws -> QueueStatus {
            guard let queue = self.queues[name] else {
                throw AMQPError(.notFound, "no queue '\(name)' in vhost '/'", replyCode: 404)
            }
            return QueueStatus(name: name, messageCount: queue.ready.count, consumerCount: queue.consumerOrder.count)
        }

        mutating func publish(_ item: PublishItem) -> Result<Void, AMQPError> {
            var failure: AMQPError?
            if let index = self.publishFaults.firstIndex(where: { $0.exchange == nil || $0.exchange == item.exchange }) {
                switch self.publishFaults.remove(at: index).fault {
                case .refuse(let error): return .failure(error)
                case .deliverThenFail(let error): failure = error
                }
            }
            guard let targets = self.route(exchange: item.exchange, routingKey: item.routingKey) else {
                return .failure(AMQPError(.notFound, "no exchange '\(item.exchange)' in vhost '/'", replyCode: 404))
            }
            if targets.isEmpty, item.mandatory {
                return .failure(AMQPError(.unroutable, "message to exchange '\(item.exchange)' with routing key "
                                          + "'\(item.routingKey)' reached no queue", replyCode: 312))
            }
            for queue in targets {
                self.enqueue(StoredMessage(body: item.message.body, properties: item.message.properties, exchange: item.exchange,
                                           routingKey: item.routingKey, sequence: 0), into: queue)
            }
            return failure.map { .failure($0) } ?? .success(())
        }

        /// The queues a message reaches; nil if the exchange does not exist.
        func route(exchange: String, routingKey: String) -> [String]? {
            if exchange.isEmpty { return self.queues[routingKey] == nil ? [] : [routingKey] }
            guard let spec = self.exchanges[exchange] else { return nil }
            let matching = self.bindings.filter { $0.exchange == exchange && (spec.kind == .fanout || $0.routingKey == routingKey) }
            return Set(matching.map(\.queue)).sorted()
        }

        mutating func enqueue(_ message: StoredMessage, into name: String) {
            guard var queue = self.queues[name] else { return }
            var message = message
            message.sequence = self.nextSequence
            self.nextSequence += 1
            // Both set: the smaller wins, as in RabbitMQ.
            let ttls = [message.properties.expiration.flatMap(Int.init), queue.spec.arguments.messageTTL].compactMap { $0 }
            let ttl = ttls.min()
            message.expiresAt = ttl.map { ContinuousClock.now + .milliseconds(max(0, $0)) }
            queue.ready.append(message)
            self.queues[name] = queue
            // Delivered by the caller's next `dispatchPending`, which has the settler.
            self.pendingDispatch.insert(name)
        }

        /// Back to its place in the queue, marked redelivered; past a quorum queue's delivery
        /// limit it is dead-lettered instead.
        mutating func giveBack(_ message: StoredMessage, to name: String) {
            guard var queue = self.queues[name] else { return }
            var message = message
            message.redelivered = true
            message.returns += 1
            if queue.spec.arguments.queueType == .quorum, let limit = queue.spec.arguments.deliveryLimit, message.returns > limit {
                self.deadLetter(message, from: name, reason: "delivery_limit")
                return
            }
            if queue.spec.arguments.queueType == .quorum {
                message.properties.headers["x-delivery-count"] = .int(Int64(message.returns))
            }
            let index = queue.ready.firstIndex { $0.sequence > message.sequence } ?? queue.ready.endIndex
            queue.ready.insert(message, at: index)
            self.queues[name] = queue
        }

        mutating func deadLetter(_ message: StoredMessage, from name: String, reason: String) {
            guard let arguments = self.queues[name]?.spec.arguments, let exchange = arguments.deadLetterExchange else {
                self.dropped += 1
                return
            }
            var properties = message.properties
            var death: AMQPTable = [
                "reason": .string(reason), "queue": .string(name), "count": .int(1),
                "exchange": .string(message.exchange), "routing-keys": .array([.string(message.routingKey)]),
            ]
            if let expiration = properties.expiration { death["original-expiration"] = .string(expiration) }
            var deaths: [AMQPFieldValue] = []
            if case .array(let earlier) = properties.headers["x-death"] { deaths = earlier }
            if let index = deaths.firstIndex(where: {
                if case .table(let entry) = $0 { entry["queue"] == .string(name) && entry["reason"] == .string(reason) } else { false }
            }), case .table(var entry) = deaths.remove(at: index) {
                entry["count"] = .int((entry["count"]?.intValue ?? 0) + 1)
                death = entry
            }
            deaths.insert(.table(death), at: 0)
            properties.headers["x-death"] = .array(deaths)
            if properties.headers["x-first-death-reason"] == nil {
                properties.headers["x-first-death-reason"] = .string(reason)
                properties.headers["x-first-death-queue"] = .string(name)
                properties.headers["x-first-death-exchange"] = .string(message.exchange)
            }
            properties.headers["x-delivery-count"] = nil
            properties.expiration = nil
            let routingKey = arguments.deadLetterRoutingKey ?? message.routingKey
            let targets = self.route(exchange: exchange, routingKey: routingKey) ?? []
            if targets.isEmpty { self.dropped += 1 }
            for target in targets {
                self.enqueue(StoredMessage(body: message.body, properties: properties, exchange: exchange, routingKey: routingKey,
                                           sequence: 0), into: target)
            }
        }

        /// Hands ready messages of `name` (and of any queue a publish or dead-letter touched) to
        /// consumers with room, round robin.
        mutating func dispatch(queue name: String, settler: InMemoryBroker) {
            self.pendingDispatch.insert(name)
            self.dispatchPending(settler: settler)
        }

        mutating func dispatchPending(settler: InMemoryBroker) {
            while let next = self.pendingDispatch.popFirst() {
                self.deliverReady(next, settler: settler)
            }
        }

        private mutating func deliverReady(_ name: String, settler: InMemoryBroker) {
            self.expire(now: .now, settler: nil)
            guard var queue = self.queues[name] else { return }
            while !queue.ready.isEmpty {
                guard let slot = queue.consumerOrder.firstIndex(where: { id in
                    self.consumers[id].map { !$0.cancelled && $0.unsettled.count < $0.prefetch } ?? false
                }) else { break }
                let id = queue.consumerOrder.remove(at: slot)
                queue.consumerOrder.append(id)
                guard var consumer = self.consumers[id] else { continue }
                let message = queue.ready.removeFirst()
                let tag = self.nextTag
                self.nextTag += 1
                let delivery = Delivery(body: message.body, properties: message.properties, exchange: message.exchange,
                                        routingKey: message.routingKey, queue: name, redelivered: message.redelivered,
                                        deliveryTag: tag, channelRef: ChannelRef(number: UInt16(truncatingIfNeeded: id),
                                                                                 epoch: consumer.epoch),
                                        settler: settler)
                if case .terminated = consumer.continuation.yield(delivery) {
                    queue.consumerOrder.removeAll { $0 == id }
                    queue.ready.insert(message, at: 0)
                    continue
                }
                consumer.unsettled.append((tag, message))
                self.consumers[id] = consumer
            }
            self.queues[name] = queue
        }

        /// RabbitMQ expires a message only at the head of its queue: one with a long TTL holds
        /// back those behind it, however short theirs.
        func nextExpiry() -> ContinuousClock.Instant? {
            self.queues.values.compactMap { $0.ready.first?.expiresAt }.min()
        }

        /// Dead-letters expired messages from the head of every queue.
        mutating func expire(now: ContinuousClock.Instant, settler: InMemoryBroker?) {
            for name in self.queues.keys.sorted() {
                while let head = self.queues[name]?.ready.first, let expiresAt = head.expiresAt, expiresAt <= now {
                    self.queues[name]?.ready.removeFirst()
                    self.deadLetter(head, from: name, reason: "expired")
                }
            }
            if let settler { self.dispatchPending(settler: settler) }
        }
    }
}
