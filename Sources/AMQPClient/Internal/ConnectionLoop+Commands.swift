import CRabbitMQ
import Foundation
import Logging

extension ConnectionLoop {
    func handle(_ command: Command) {
        if self.closing != nil {
            switch command {
            case .settle, .status, .cancelConsumer, .abandonConsumer: break
            case .close(_, let reply):
                if let reply { self.closing?.replies.append(reply) }
                return
            default:
                self.refuse(command, with: Self.closedError)
                return
            }
        }
        switch command {
        case .publish(let request):
            self.unsent.append(request)
        case .publishBatch(let requests):
            self.unsent.append(contentsOf: requests)
        case .settle(let settlement, let tag, let channel, let reply):
            self.settle(settlement, tag: tag, channel: channel, reply: reply)
        case .status(let reply):
            reply.resume(returning: self.status)
        case .consume(let registration, let reply):
            guard let channel = self.allocateConsumerChannel() else {
                registration.continuation.finish()
                reply.resume(throwing: AMQPError(.invalidArgument,
                    "this connection already has \(self.consumers.count) consumers open, one channel each, and "
                    + "channel_max is \(self.channelLimit): cancel consumers you no longer need, or open another connection"))
                return
            }
            var state = ConsumerState(registration: registration, channel: channel)
            state.pendingReply = reply
            state.pendingDeadline = .now + self.configuration.operationTimeout
            self.consumers[registration.id] = state
        case .cancelConsumer(let id, let reply):
            self.cancelConsumer(id)
            reply.resume()
        case .abandonConsumer(let id):
            self.abandonConsumer(id)
        case .close(let drainTimeout, let reply):
            self.closing = Closing(deadline: .now + drainTimeout, replies: reply.map { [$0] } ?? [])
            self.logger.info("amqp connection closing", metadata: [
                "amqp.unconfirmed": "\(self.confirms.outstanding)", "amqp.queued": "\(self.unsent.count)",
            ])
            for id in self.consumers.keys { self.cancelConsumer(id) }
        default:
            self.pendingOperations.append(PendingOperation(command: command,
                                                           deadline: .now + self.configuration.operationTimeout))
        }
    }

    /// Carries out queued broker operations in order. One that fails because the connection broke
    /// stays queued and is retried after reconnecting, until its deadline.
    func runPendingOperations() {
        while self.connection != nil, let operation = self.pendingOperations.first {
            do {
                try self.execute(operation.command)
                self.pendingOperations.removeFirst()
            } catch where error.code == .connectionLost {
                return
            } catch {
                self.pendingOperations.removeFirst()
                self.refuse(operation.command, with: error)
            }
        }
    }

    private func execute(_ command: Command) throws(AMQPError) {
        switch command {
        case .declareExchange(let spec, let reply):
            try self.declare(spec)
            self.topology.record(spec)
            reply.resume()
        case .declareQueue(let spec, let reply):
            let status = try self.declare(spec)
            self.topology.record(spec)
            reply.resume(returning: status)
        case .bind(let spec, let reply):
            try self.bind(spec)
            self.topology.record(spec)
            reply.resume()
        case .unbind(let spec, let reply):
            try self.bind(spec, unbind: true)
            self.topology.forget(spec)
            reply.resume()
        case .inspectQueue(let name, let reply):
            try self.ensureControlChannel()
            defer { self.arena.reset() }
            let queue = self.arena.bytes(name)
            let ok = try self.rpc(.inspectQueue(name), channel: Self.controlChannel) { connection in
                amqp_queue_declare(connection, Self.controlChannel, queue, 1, 0, 0, 0, amqp_empty_table)
            }
            reply.resume(returning: QueueStatus(name: name, messageCount: Int(ok.message_count),
                                                consumerCount: Int(ok.consumer_count)))
        case .deleteQueue(let name, let ifEmpty, let reply):
            try self.ensureControlChannel()
            defer { self.arena.reset() }
            let queue = self.arena.bytes(name)
            let ok = try self.rpc(.deleteQueue(name), channel: Self.controlChannel) { connection in
                amqp_queue_delete(connection, Self.controlChannel, queue, 0, ifEmpty ? 1 : 0)
            }
            self.topology.forgetQueue(named: name)
            reply.resume(returning: Int(ok.message_count))
        case .purgeQueue(let name, let reply):
            try self.ensureControlChannel()
            defer { self.arena.reset() }
            let queue = self.arena.bytes(name)
            let ok = try self.rpc(.purgeQueue(name), channel: Self.controlChannel) { connection in
                amqp_queue_purge(connection, Self.controlChannel, queue)
            }
            reply.resume(returning: Int(ok.message_count))
        case .deleteExchange(let name, let reply):
            try self.ensureControlChannel()
            defer { self.arena.reset() }
            let exchange = self.arena.bytes(name)
            _ = try self.rpc(.deleteExchange(name), channel: Self.controlChannel) { connection in
                amqp_exchange_delete(connection, Self.controlChannel, exchange, 0)
            }
            self.topology.forgetExchange(named: name)
            reply.resume()
        default:
            preconditionFailure("not a broker operation: \(command)")
        }
    }

    func declare(_ spec: ExchangeSpec) throws(AMQPError) {
        try self.ensureControlChannel()
        defer { self.arena.reset() }
        let name = self.arena.bytes(spec.name)
        let kind = self.arena.bytes(spec.kind.rawValue)
        let arguments = self.arena.table(spec.arguments)
        _ = try self.rpc(.declareExchange(spec.name), channel: Self.controlChannel) { connection in
            amqp_exchange_declare(connection, Self.controlChannel, name, kind, 0, spec.durable ? 1 : 0,
                                  spec.autoDelete ? 1 : 0, 0, arguments)
        }
    }

    @discardableResult
    func declare(_ spec: QueueSpec) throws(AMQPError) -> QueueStatus {
        try self.ensureControlChannel()
        defer { self.arena.reset() }
        let name = self.arena.bytes(spec.name)
        let arguments = self.arena.table(spec.arguments.table)
        let ok = try self.rpc(.declareQueue(spec.name), channel: Self.controlChannel) { connection in
            amqp_queue_declare(connection, Self.controlChannel, name, 0, spec.durable ? 1 : 0, spec.exclusive ? 1 : 0,
                               spec.autoDelete ? 1 : 0, arguments)
        }
        return QueueStatus(name: ok.queue.string, messageCount: Int(ok.message_count), consumerCount: Int(ok.consumer_count))
    }

    func bind(_ spec: BindingSpec, unbind: Bool = false) throws(AMQPError) {
        try self.ensureControlChannel()
        defer { self.arena.reset() }
        let queue = self.arena.bytes(spec.queue)
        let exchange = self.arena.bytes(spec.exchange)
        let routingKey = self.arena.bytes(spec.routingKey)
        let arguments = self.arena.table(spec.arguments)
        if unbind {
            _ = try self.rpc(.unbind(queue: spec.queue, exchange: spec.exchange), channel: Self.controlChannel) { connection in
                amqp_queue_unbind(connection, Self.controlChannel, queue, exchange, routingKey, arguments)
            }
        } else {
            _ = try self.rpc(.bind(queue: spec.queue, exchange: spec.exchange), channel: Self.controlChannel) { connection in
                amqp_queue_bind(connection, Self.controlChannel, queue, exchange, routingKey, arguments)
            }
        }
    }

    // MARK: Consumers

    /// Subscribes consumers that are not (yet, or any more) subscribed and whose retry time has come.
    func resubscribeDueConsumers() {
        let now = ContinuousClock.now
        for id in self.consumers.keys.sorted() {
            guard self.connection != nil, let state = self.consumers[id], !state.subscribed, !state.cancelled,
                  state.retryAt.map({ $0 <= now }) ?? true else { continue }
            do {
                try self.subscribe(id)
                if let reply = self.consumers[id]?.pendingReply {
                    self.consumers[id]?.pendingReply = nil
                    reply.resume()
                }
            } catch where error.code == .connectionLost {
                return
            } catch {
                if let reply = self.consumers[id]?.pendingReply {
                    // The first subscription failed: tell the caller instead of retrying forever.
                    self.consumers[id]?.registration.continuation.finish()
                    self.consumers[id] = nil
                    reply.resume(throwing: error)
                    continue
                }
                self.consumers[id]?.scheduleRetry(backoff: self.configuration.reconnectBackoff)
                self.logger.warning("amqp re-subscribe failed; will retry", metadata: [
                    "amqp.queue": "\(state.registration.queue)", "error": "\(error.message)",
                ])
            }
        }
    }

    private func subscribe(_ id: Int) throws(AMQPError) {
        guard let state = self.consumers[id] else { return }
        let channel = state.channel
        let queue = state.registration.queue
        if state.epoch == 0 {
            _ = try self.rpc(.consume(queue), channel: channel) { connection in amqp_channel_open(connection, channel) }
            self.channelEpoch += 1
            self.consumers[id]?.epoch = self.channelEpoch
            _ = try self.rpc(.consume(queue), channel: channel) { connection in
                amqp_basic_qos(connection, channel, 0, state.registration.prefetch, 0)
            }
        }
        // A broker-side cancel usually means the queue was deleted: declare it again if this
        // connection declared it, so the consumer comes back instead of failing forever.
        if state.retryAttempt > 0, let spec = self.topology.queue(named: queue) {
            try self.declare(spec)
            for binding in self.topology.bindings(ofQueue: queue) { try self.bind(binding) }
        }
        defer { self.arena.reset() }
        let queueBytes = self.arena.bytes(queue)
        let ok = try self.rpc(.consume(queue), channel: channel) { connection in
            amqp_basic_consume(connection, channel, queueBytes, amqp_empty_bytes, 0, 0, 0, amqp_empty_table)
        }
        self.consumers[id]?.consumerTag = ok.consumer_tag.string
        self.consumers[id]?.subscribed = true
        self.consumers[id]?.retryAt = nil
        self.consumers[id]?.retryAttempt = 0
        self.logger.debug("amqp consumer subscribed", metadata: ["amqp.queue": "\(queue)", "amqp.channel": "\(channel)"])
    }

    /// Stops deliveries to a consumer; its channel stays open until what it received is settled.
    func cancelConsumer(_ id: Int) {
        guard let state = self.consumers[id], !state.cancelled else { return }
        self.consumers[id]?.cancelled = true
        if let reply = state.pendingReply {
            self.consumers[id]?.pendingReply = nil
            reply.resume(throwing: Self.closedError)
        }
        if state.subscribed, let tag = state.consumerTag {
            defer { self.arena.reset() }
            let tagBytes = self.arena.bytes(tag)
            _ = try? self.rpc(.other("cancel the consumer of '\(state.registration.queue)'"), channel: state.channel) {
                connection in amqp_basic_cancel(connection, state.channel, tagBytes)
            }
            self.consumers[id]?.subscribed = false
        }
        state.registration.continuation.finish()
    }

    /// The lowest consumer channel no consumer holds, so that a long-lived connection touches few
    /// channel numbers (the library keeps a memory pool per number it has seen). A channel closed
    /// while frames were queued waits until they are read: one of them may be its delivery, which
    /// must not be taken for a new consumer's.
    func allocateConsumerChannel() -> UInt16? {
        guard self.channelLimit >= Self.firstConsumerChannel else { return nil }
        if self.connection.map({ amqp_frames_enqueued($0) == 0 }) ?? true { self.quarantinedChannels.removeAll() }
        let taken = Set(self.consumers.values.map(\.channel)).union(self.quarantinedChannels)
        return (Self.firstConsumerChannel...self.channelLimit).first { !taken.contains($0) }
    }

    /// Closes a consumer's channel; false if that cost the connection.
    @discardableResult
    func closeConsumerChannel(_ channel: UInt16) -> Bool {
        guard let connection = self.connection else { return true }
        self.quarantinedChannels.insert(channel)
        let reply = self.guarded("channel.close") { amqp_channel_close(connection, channel, AMQP_REPLY_SUCCESS) }
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return true
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == CRMQ_CHANNEL_CLOSE:
            // The broker closed it at the same moment: answer, so the number is free on its side too.
            self.sendChannelCloseOk(channel)
            return true
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == CRMQ_CONNECTION_CLOSE:
            self.sendConnectionCloseOk()
            self.connectionFailed(AMQPError(.connectionLost, "the broker closed the connection while a channel was closing"))
            return false
        default:
            self.connectionFailed(AMQPError(.connectionLost, "could not close a consumer channel: "
                                            + Self.libraryMessage(reply.library_error)))
            return false
        }
    }

    /// Forgets a consumer nobody reads any more and closes its channel, so the broker requeues
    /// every delivery it held (handed out or not); settling one of them later fails harmlessly.
    func abandonConsumer(_ id: Int) {
        guard let state = self.consumers[id] else { return }
        self.consumers[id] = nil
        state.pendingReply?.resume(throwing: Self.closedError)
        state.registration.continuation.finish()
        guard state.epoch != 0, self.connection != nil else { return }
        guard self.closeConsumerChannel(state.channel) else { return }
        self.logger.debug("amqp consumer abandoned by its reader; channel closed", metadata: [
            "amqp.queue": "\(state.registration.queue)", "amqp.unsettled": "\(state.unsettled.count)",
        ])
    }

    func closeDrainedConsumers() {
        for (id, state) in self.consumers where state.cancelled && state.unsettled.isEmpty {
            self.consumers[id] = nil
            if state.epoch != 0 { self.closeConsumerChannel(state.channel) }
        }
    }

    private func settle(_ settlement: Settlement, tag: UInt64, channel: ChannelRef, reply: Reply<Void>) {
        guard let connection = self.connection,
              let id = self.consumers.first(where: { $0.value.channel == channel.number })?.key,
              let state = self.consumers[id], state.epoch != 0, state.epoch == channel.epoch else {
            reply.resume(throwing: AMQPError(.deliveryExpired,
                "the channel this message arrived on has closed (connection lost or channel error), so it can no "
                + "longer be acknowledged; the broker redelivers it, so process it idempotently"))
            return
        }
        let status: Int32
        let multiple: Bool
        switch settlement {
        case .ack(let isMultiple):
            multiple = isMultiple
            status = self.guarded("basic.ack") { amqp_basic_ack(connection, channel.number, tag, isMultiple ? 1 : 0) }
        case .reject(let requeue):
            multiple = false
            status = self.guarded("basic.reject") { amqp_basic_reject(connection, channel.number, tag, requeue ? 1 : 0) }
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            let error = AMQPError(.connectionLost, "could not settle a delivery: \(Self.libraryMessage(status)); "
                                  + "the broker redelivers it")
            self.connectionFailed(error)
            reply.resume(throwing: error)
            return
        }
        self.consumers[id]?.settled(tag: tag, multiple: multiple)
        reply.resume()
    }

    // MARK: Deadlines and closing

    func expireDeadlines() {
        let now = ContinuousClock.now
        for request in self.confirms.expire(where: { $0.deadline <= now }) {
            request.fail(AMQPError(.confirmTimeout,
                "the broker did not confirm the publish to exchange '\(request.exchange)' within "
                + "\(self.configuration.publishTimeout); it may still be delivered. Retry it: consumers must treat "
                + "duplicates as normal."))
        }
        while let first = self.unsent.first, first.deadline <= now {
            self.unsent.removeFirst()
            first.fail(self.unsentTimeout(first))
        }
        while let first = self.pendingOperations.first, first.deadline <= now {
            self.pendingOperations.removeFirst()
            self.refuse(first.command, with: AMQPError(.timeout,
                "could not complete the broker operation within \(self.configuration.operationTimeout): not connected "
                + "(last error: \(self.lastError?.message ?? "none"))"))
        }
        for (id, state) in self.consumers {
            guard let reply = state.pendingReply, let deadline = state.pendingDeadline, deadline <= now else { continue }
            state.registration.continuation.finish()
            self.consumers[id] = nil
            reply.resume(throwing: AMQPError(.timeout,
                "could not subscribe to queue '\(state.registration.queue)' within \(self.configuration.operationTimeout): "
                + "not connected (last error: \(self.lastError?.message ?? "none"))"))
        }
    }

    /// Finishes a graceful close once everything in flight is settled, or at the drain deadline.
    func advanceClosing() {
        guard let closing = self.closing else { return }
        let drained = self.confirms.isEmpty && self.unsent.isEmpty && self.consumers.isEmpty
        guard drained || self.connection == nil || ContinuousClock.now >= closing.deadline else { return }
        let abandoned = AMQPError(.closed, "the connection was closed before the broker confirmed this publish; it may "
                                  + "or may not have been delivered")
        for request in self.confirms.reset() { request.fail(abandoned) }
        while let request = self.unsent.popFirst() { request.fail(Self.closedError) }
        while let operation = self.pendingOperations.popFirst() { self.refuse(operation.command, with: Self.closedError) }
        for state in self.consumers.values {
            state.registration.continuation.finish()
            state.pendingReply?.resume(throwing: Self.closedError)
        }
        self.consumers.removeAll()
        if let connection = self.connection {
            _ = self.guarded("connection.close") { amqp_connection_close(connection, AMQP_REPLY_SUCCESS) }
            self.watchdog.setSocket(-1)
            amqp_destroy_connection(connection)
            self.connection = nil
        }
        self.watchdog.stop()
        for command in self.mailbox.shutDown() { self.refuse(command, with: Self.closedError) }
        self.logger.info("amqp connection closed", metadata: ["amqp.drained": "\(drained)"])
        for reply in closing.replies { reply.resume() }
        self.finished = true
    }
}
