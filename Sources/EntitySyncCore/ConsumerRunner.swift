import AMQPModel
import Foundation
import Logging
import Metrics

/// Consumes one consumer group's queues and applies every change to the group's store.
///
/// Deliveries are taken in batches of what has arrived (up to the prefetch), handled in slices of
/// at most 1 MiB of messages: each is decoded and validated, the valid ones are applied in one
/// store transaction (newer versions only, in delivery order), and acked after the commit with
/// one `ack(multiple:)`. If a slice fails,
/// its changes are applied one by one, so that a failing change is retried alone. A poison message (undecodable, unknown type or content type, invalid
/// fields) is copied to the queue's dead-letter queue with the reason in a header and acked at
/// once. A transient failure (store busy, I/O error) is copied to the queue's retry queue with a
/// per-message TTL that grows with each attempt, after which the broker routes it back; past
/// `maxAttempts` it is dead-lettered with the last error. Nothing spins while the store is down.
public final class ConsumerRunner: Sendable {
    /// Declare the group's queues (so it can start before the producer), only check they exist
    /// (a broker user without configure permission), or nothing (the caller did one of those).
    public enum TopologySetup: Sendable { case declare, verify, alreadyPrepared }

    public struct Configuration: Sendable {
        /// Unsettled deliveries per queue; also the most changes applied in one transaction.
        public var prefetch: UInt16 = 4096
        /// Attempts for a transiently failing event before it is dead-lettered.
        public var maxAttempts = 5
        /// Delay before retry n is `retryBackoff.ceiling(attempt: n - 1)`.
        public var retryBackoff = Backoff(initial: .seconds(1), maximum: .seconds(60), multiplier: 4)
        /// What `run()` does about the group's queues before consuming.
        public var topologySetup = TopologySetup.declare
        /// How often a paused runner checks whether its store is back.
        public var storeCheckBackoff = Backoff(initial: .milliseconds(100), maximum: .seconds(5))
        /// Told `false` when the store becomes unreachable and the runner pauses, `true` when it
        /// is back (a service turns this into its health status).
        public var storeAvailabilityChanged: @Sendable (Bool) -> Void = { _ in }

        public init() {}
    }

    /// Header with the poison reason or the last transient error of a dead-lettered message.
    public static let reasonHeader = "x-entitysync-reason"
    /// Header counting transient failures of a message.
    public static let attemptHeader = "x-entitysync-attempt"
    /// Header naming the queue a dead-lettered or retried message came from.
    public static let sourceQueueHeader = "x-entitysync-source-queue"

    public let group: String
    let topology: SyncTopology
    let broker: any MessageBroker
    let store: any ReplicaStore
    private let configuration: Configuration
    let logger: Logger
    private let handledCount = MutexBox(0)
    /// Workers paused because the store is unreachable.
    private let pausedWorkers = MutexBox(0)
    /// The last check of the store failed (cleared when one succeeds).
    private let storeDown = MutexBox(false)
    /// Set when `run()` is cancelled: a paused worker stops waiting for the store and leaves its
    /// delivery unsettled, for the broker to redeliver.
    private let stopping = MutexBox(false)
    /// A delivery was left unsettled (stopping while the store is down): from then on acks name
    /// single deliveries, since an `ack(multiple:)` would settle the one left for redelivery.
    private let leftUnsettled = MutexBox(false)
    private let stopSignal = WakeSignal()

    /// Deliveries this instance has handled (applied, skipped as stale, retried or dead-lettered).
    public var handled: Int { self.handledCount.read { $0 } }
    /// `WaitForVersion` callers, answered as this instance applies their changes.
    public let versionWaiters: VersionWaiters

    public init(group: String, topology: SyncTopology, broker: any MessageBroker, store: any ReplicaStore,
                configuration: Configuration = Configuration(), logger: Logger) {
        self.group = group
        self.topology = topology
        self.broker = broker
        self.store = store
        self.versionWaiters = VersionWaiters(store: store)
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "consumer.group"] = "\(group)"
        self.logger = logger
    }

    /// Declares the group's queues (so it can start before the producer) or checks they exist, then consumes until the
    /// task is cancelled. On cancellation it stops new deliveries, finishes and acks the ones it
    /// holds, and returns.
    public func run() async throws {
        let queues = self.topology.queues(forGroup: self.group)
        guard !queues.isEmpty else {
            throw SyncError(.configuration, "consumer group '\(self.group)' receives no entity type; "
                            + "add it to the topology's routes")
        }
        switch self.configuration.topologySetup {
        case .declare: try await self.topology.prepare(forGroup: self.group, declare: true, on: self.broker)
        case .verify: try await self.topology.prepare(forGroup: self.group, declare: false, on: self.broker)
        case .alreadyPrepared: break
        }
        var subscribed: [(EntityKind, BrokerConsumer)] = []
        for (kind, queue) in queues {
            do {
                subscribed.append((kind, try await self.broker.consume(queue: queue, prefetch: self.configuration.prefetch)))
            } catch let error as AMQPError where error.code == .accessRefused {
                throw SyncError(.configuration, "the broker refused to let this service read queue '\(queue)' (\(error.message)); "
                                + "grant its user the permissions that `entity-sync topology permissions --group \(self.group)` prints")
            }
        }
        let consumers = subscribed
        self.logger.info("consumer started", metadata: ["consumer.queues": "\(queues.map(\.queue))"])
        // Workers are unstructured so cancelling run() does not cancel the handling (and the
        // store writes) of deliveries already received; it only stops new ones.
        let batchLimit = Int(self.configuration.prefetch)
        let workers = consumers.map { kind, consumer in
            Task {
                while let batch = await consumer.deliveries.nextBatch(maximum: batchLimit) { await self.handle(batch, kind: kind) }
            }
        }
        await withTaskCancellationHandler {
            for worker in workers { await worker.value }
        } onCancel: {
            self.stopping.update { $0 = true }
            self.stopSignal.signal()
            Task { for (_, consumer) in consumers { await consumer.cancel() } }
        }
        self.logger.info("consumer stopped")
    }

    /// Handles deliveries that arrived together, 1 MiB of messages at a time: poison set aside one
    /// by one, the rest applied in one transaction and acked together; one by one if that fails.
    func handle(_ batch: [Delivery], kind: EntityKind) async {
        guard batch.count > 1 else {
            if let delivery = batch.first { await self.handle(delivery, kind: kind) }
            return
        }
        if self.stopping.read({ $0 }) && self.storeDown.read({ $0 }) {
            self.leftUnsettled.update { $0 = true }
            return
        }
        // Bounded by size: a batch of large groups must not hold the store's write lock (which
        // the group's other instances wait for) for long, nor be decoded all at once (a batch
        // can be as long as the prefetch).
        var start = 0
        while start < batch.count {
            var end = start
            var bytes = 0
            while end < batch.count, end == start || bytes + batch[end].body.count <= Self.batchBytes {
                bytes += batch[end].body.count
                end += 1
            }
            var valid: [(delivery: Delivery, change: ValidatedChange)] = []
            valid.reserveCapacity(end - start)
            for delivery in batch[start..<end] {
                switch ChangeCodec.decode(body: delivery.body, contentType: delivery.properties.contentType, expected: kind) {
                case .failure(let poison):
                    // Forwarded and settled before the batch is acked, so the ack of the batch
                    // (multiple) never settles it before its dead-letter copy is confirmed.
                    defer { self.handledCount.update { $0 += 1 } }
                    self.logPoison(delivery, poison)
                    await self.deadLetter(delivery, kind: kind, reason: poison.description)
                case .success(let change):
                    valid.append((delivery, change))
                }
            }
            if valid.count == 1 {
                // Alone (one large message, or the rest poison): the single path, with no batch to fall back from.
                await self.handle(valid[0].delivery, kind: kind)
            } else if !valid.isEmpty {
                await self.applyAndAck(valid, kind: kind)
            }
            start = end
        }
    }

    /// Message bytes applied in one transaction at most (one larger message goes alone).
    static let batchBytes = 1 << 20

    /// Applies valid changes in one store call and acks them; one by one if that fails.
    private func applyAndAck(_ valid: [(delivery: Delivery, change: ValidatedChange)], kind: EntityKind) async {
        do {
            let decisions = try await self.store.apply(batch: valid.map(\.change))
            guard decisions.count == valid.count else {
                throw SyncError(.storeUnavailable, "the store answered \(decisions.count) decisions for \(valid.count) changes")
            }
            self.record(valid.map(\.change), decisions, kind: kind)
        } catch {
            // One change the store refuses, or the store itself: one by one, a failing change
            // is retried alone and an outage pauses the consumer, as for a single delivery.
            Counter(label: "entitysync_batch_fallbacks_total", dimensions: [("group", self.group), ("entity", kind.rawValue)])
                .increment()
            self.logger.warning("batch apply failed; applying its changes one by one",
                                metadata: ["batch": "\(valid.count)", "error": "\(error)"])
            for (delivery, _) in valid { await self.handle(delivery, kind: kind) }
            return
        }
        self.handledCount.update { $0 += valid.count }
        await self.acknowledge(valid.map(\.delivery))
    }

    /// Acks deliveries whose changes are committed: the newest of each channel with `multiple`,
    /// which settles the rest (every earlier delivery of the consumer is settled by then).
    private func acknowledge(_ deliveries: [Delivery]) async {
        guard deliveries.count > 1, !self.leftUnsettled.read({ $0 }) else {
            for delivery in deliveries { await self.settle(delivery) { try await delivery.ack() } }
            return
        }
        var newest: [ChannelRef: Delivery] = [:]
        for delivery in deliveries where newest[delivery.channelRef].map({ $0.deliveryTag < delivery.deliveryTag }) ?? true {
            newest[delivery.channelRef] = delivery
        }
        for delivery in newest.values { await self.settle(delivery) { try await delivery.ack(multiple: true) } }
    }

    private func logPoison(_ delivery: Delivery, _ poison: PoisonReason) {
        self.logger.error("poison message dead-lettered", metadata: [
            "amqp.queue": "\(delivery.queue)", "amqp.message_id": "\(delivery.properties.messageID ?? "")",
            "reason": "\(poison)",
        ])
    }

    /// Counts, logs and announces one handled change.
    private func record(_ change: ValidatedChange, _ decision: VersionRule.Decision) {
        self.record([change], [decision], kind: change.kind)
    }

    /// Counts, logs and announces changes of one kind handled together: one counter update and
    /// one wake-up per batch, not per change.
    private func record(_ changes: [ValidatedChange], _ decisions: [VersionRule.Decision], kind: EntityKind) {
        var applied = 0
        for (change, decision) in zip(changes, decisions) {
            if decision == .apply { applied += 1 }
            self.logger.debug("change handled", metadata: [
                "entity.type": "\(change.kind.rawValue)", "entity.id": "\(change.entityID)",
                "entity.version": "\(change.version)", "decision": "\(decision)",
            ])
        }
        let dimensions = [("group", self.group), ("entity", kind.rawValue)]
        if applied > 0 {
            Counter(label: "entitysync_events_applied_total", dimensions: dimensions).increment(by: applied)
            self.versionWaiters.applied(zip(changes, decisions).lazy.filter { $0.1 == .apply }.map(\.0))
        }
        if applied < changes.count {
            Counter(label: "entitysync_events_stale_total", dimensions: dimensions).increment(by: changes.count - applied)
        }
    }

    func handle(_ delivery: Delivery, kind: EntityKind) async {
        // Stopping with the store down: the deliveries still buffered would each wait out a
        // store deadline before giving up. Leave them unsettled for the broker to redeliver.
        if self.stopping.read({ $0 }) && self.storeDown.read({ $0 }) {
            self.leftUnsettled.update { $0 = true }
            return
        }
        defer { self.handledCount.update { $0 += 1 } }
        var outcome = await self.apply(delivery, kind: kind)
        // A store that cannot be reached is an outage, not this message's fault: hold the
        // delivery (unacked, so the queue keeps it) and apply it again once the store answers.
        while case .failed(let error) = outcome, await self.storeIsDown(after: error) {
            guard await self.waitForStore(after: error) else {
                self.leftUnsettled.update { $0 = true }
                self.logger.info("stopping while the store is unreachable; the delivery will be redelivered",
                                 metadata: ["amqp.queue": "\(delivery.queue)"])
                return
            }
            outcome = await self.apply(delivery, kind: kind)
        }
        switch outcome {
        case .poison(let poison):
            self.logPoison(delivery, poison)
            await self.deadLetter(delivery, kind: kind, reason: poison.description)
        case .failed(let error):
            await self.retry(delivery, kind: kind, error: error)
        case .applied, .stale:
            await self.settle(delivery) { try await delivery.ack() }
        }
    }

    /// What became of one delivery's change.
    enum ApplyOutcome {
        case applied
        case stale
        case poison(PoisonReason)
        case failed(any Error)
    }

    /// Decodes and applies one delivery under the version rule: the one apply path for consumed
    /// and re-driven events alike. Settling the delivery is the caller's business.
    func apply(_ delivery: Delivery, kind: EntityKind) async -> ApplyOutcome {
        await Self.apply(body: delivery.body, contentType: delivery.properties.contentType, kind: kind,
                         store: self.store) { change, decision in self.record(change, decision) }
    }

    /// Decodes, validates and applies one message body from a `kind` queue to `store`, without a
    /// broker; `handled` sees every change the store applied or found stale.
    static func apply(body: [UInt8], contentType: String?, kind: EntityKind, store: any ReplicaStore,
                      handled: (ValidatedChange, VersionRule.Decision) -> Void = { _, _ in }) async -> ApplyOutcome {
        switch ChangeCodec.decode(body: body, contentType: contentType, expected: kind) {
        case .failure(let poison):
            return .poison(poison)
        case .success(let change):
            do {
                let decision = try await store.apply(change)
                handled(change, decision)
                return decision == .apply ? .applied : .stale
            } catch {
                return .failed(error)
            }
        }
    }

    /// Whether `error` came from an unreachable store rather than from this change: the store
    /// failed, and a probe write of its own fails too (`checkReachable`).
    private func storeIsDown(after error: any Error) async -> Bool {
        guard let error = error as? SyncError, error.code == .storeUnavailable else { return false }
        do {
            try await self.store.checkReachable()
            self.storeDown.update { $0 = false }
            return false
        } catch {
            self.storeDown.update { $0 = true }
            return true
        }
    }

    /// Waits until the store answers (true) or the runner stops (false), reporting the outage.
    private func waitForStore(after error: any Error) async -> Bool {
        let started = ContinuousClock.now
        // The availability callback runs under the counter's lock, so that reports from workers
        // pausing and resuming at once arrive in the order the counter changed.
        let report = self.configuration.storeAvailabilityChanged
        let first = self.pausedWorkers.update { count -> Bool in
            count += 1
            if count == 1 { report(false) }
            return count == 1
        }
        if first {
            self.logger.error("store unreachable; consuming paused, nothing is acked or dead-lettered until it is back",
                              metadata: ["error": "\(error)"])
        }
        defer {
            self.pausedWorkers.update { count in
                count -= 1
                if count == 0 { report(true) }
            }
        }
        var attempt = 0
        while !self.stopping.read({ $0 }) {
            await self.stopSignal.wait(timeout: self.configuration.storeCheckBackoff.delay(attempt: attempt)) { self.stopping.read { $0 } }
            attempt += 1
            guard !self.stopping.read({ $0 }) else { break }
            if (try? await self.store.checkReachable()) != nil {
                self.storeDown.update { $0 = false }
                self.logger.notice("store reachable again; consuming resumes",
                                   metadata: ["outage": "\(ContinuousClock.now - started)"])
                return true
            }
        }
        return false
    }

    private func retry(_ delivery: Delivery, kind: EntityKind, error: any Error) async {
        let attempt: Int
        let delay: Duration
        switch RetryAttempt.decide(headers: delivery.properties.headers, maxAttempts: self.configuration.maxAttempts,
                                   backoff: self.configuration.retryBackoff) {
        case .deadLetter(let attempts):
            self.logger.error("change failed too often; dead-lettered", metadata: [
                "amqp.queue": "\(delivery.queue)", "attempts": "\(attempts)", "error": "\(error)",
            ])
            await self.deadLetter(delivery, kind: kind, reason: "failed \(attempts) times; last error: \(error)")
            return
        case .retry(let next, let backoff):
            attempt = next
            delay = backoff
        }
        Counter(label: "entitysync_events_retried_total", dimensions: [("group", self.group), ("entity", kind.rawValue)])
            .increment()
        var copy = OutgoingMessage(body: delivery.body, properties: delivery.properties)
        copy.properties.headers[Self.attemptHeader] = .int(Int64(attempt))
        copy.properties.headers[Self.reasonHeader] = .string("\(error)")
        copy.properties.headers[Self.sourceQueueHeader] = .string(delivery.queue)
        copy.properties.expiration = RetryAttempt.expiration(for: delay)
        self.logger.warning("change failed; retrying later", metadata: [
            "amqp.queue": "\(delivery.queue)", "attempt": "\(attempt)", "retry_in": "\(delay)", "error": "\(error)",
        ])
        await self.forward(delivery, copy: copy, routingKey: SyncTopology.retryQueue(forQueue: delivery.queue),
                           fallbackDelay: delay)
    }

    func deadLetter(_ delivery: Delivery, kind: EntityKind, reason: String) async {
        Counter(label: "entitysync_events_dead_lettered_total", dimensions: [("group", self.group), ("entity", kind.rawValue)])
            .increment()
        var copy = OutgoingMessage(body: delivery.body, properties: delivery.properties)
        copy.properties.headers[Self.reasonHeader] = .string(reason)
        copy.properties.headers[Self.sourceQueueHeader] = .string(delivery.queue)
        copy.properties.expiration = nil
        do {
            try await self.store.recordDeadLetter(kind)
        } catch {
            self.logger.warning("could not count a dead letter", metadata: ["error": "\(error)"])
        }
        await self.forward(delivery, copy: copy, routingKey: SyncTopology.deadLetterQueue(forQueue: delivery.queue),
                           fallbackDelay: nil)
    }

    /// Publishes `copy` to a queue (through the group's forward exchange) and acks the original once the
    /// copy is confirmed, so the message is in exactly one place or, after a crash, in both.
    private func forward(_ delivery: Delivery, copy: OutgoingMessage, routingKey: String, fallbackDelay: Duration?) async {
        do {
            try await self.broker.publish(copy, exchange: SyncTopology.forwardExchange(forGroup: self.group), routingKey: routingKey,
                                          mandatory: true)
            await self.settle(delivery) { try await delivery.ack() }
        } catch {
            self.logger.warning("could not forward message; handing it back to the broker", metadata: [
                "amqp.queue": "\(delivery.queue)", "target": "\(routingKey)", "error": "\(error)",
            ])
            if let fallbackDelay {
                // Transient failure and the broker is unhappy too: wait instead of spinning, but
                // not past a stop, which leaves the delivery to be redelivered instead.
                await self.stopSignal.wait(timeout: fallbackDelay) { self.stopping.read { $0 } }
                guard !self.stopping.read({ $0 }) else {
                    self.leftUnsettled.update { $0 = true }
                    return
                }
                await self.settle(delivery) { try await delivery.reject(requeue: true) }
            } else {
                // Poison: the queue's own dead-letter exchange takes it (without our reason header).
                await self.settle(delivery) { try await delivery.reject(requeue: false) }
            }
        }
    }

    func settle(_ delivery: Delivery, _ body: () async throws -> Void) async {
        do {
            try await body()
        } catch {
            // The channel closed meanwhile; the broker redelivers and the version rule absorbs it.
            self.logger.info("could not settle a delivery; it will be redelivered", metadata: ["error": "\(error)"])
        }
    }
}
