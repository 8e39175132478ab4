import CRabbitMQ
import Foundation
import Logging

extension ConnectionLoop {
    /// Reads and dispatches frames; the first wait uses `timeout`, later ones don't wait. Bounded
    /// so a flood of deliveries cannot starve the command queue.
    func readFrames(timeout: timeval) {
        var wait = timeout
        for _ in 0..<512 {
            guard let connection = self.connection else { return }
            var frame = amqp_frame_t()
            let status = self.guarded("read frame") { amqp_simple_wait_frame_noblock(connection, &frame, &wait) }
            if status == AMQP_STATUS_TIMEOUT.rawValue { return }
            guard status == AMQP_STATUS_OK.rawValue else {
                let reason = status == AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue
                    ? "no heartbeat from the broker for \(self.configuration.heartbeat * 2)"
                    : Self.libraryMessage(status)
                self.connectionFailed(AMQPError(.connectionLost, reason))
                return
            }
            wait = timeval(tv_sec: 0, tv_usec: 0)
            self.dispatch(frame)
            if let connection = self.connection { amqp_maybe_release_buffers_on_channel(connection, frame.channel) }
        }
    }

    private func dispatch(_ frame: amqp_frame_t) {
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else {
            self.logger.debug("amqp ignored a content frame outside a message", metadata: ["amqp.channel": "\(frame.channel)"])
            return
        }
        let method = frame.payload.method
        let channel = frame.channel
        switch method.id {
        case CRMQ_BASIC_DELIVER:
            self.handleDeliver(channel: channel, method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee)
        case CRMQ_BASIC_ACK:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            self.handleConfirm(channel: channel, tag: ack.delivery_tag, multiple: ack.multiple != 0, nack: false)
        case CRMQ_BASIC_NACK:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            self.handleConfirm(channel: channel, tag: nack.delivery_tag, multiple: nack.multiple != 0, nack: true)
        case CRMQ_BASIC_RETURN:
            self.handleReturn(channel: channel, method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee)
        case CRMQ_BASIC_CANCEL:
            let cancel = method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            self.handleServerCancel(channel: channel, consumerTag: cancel.consumer_tag.string)
        case CRMQ_CHANNEL_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            let url = self.configuration.url
            let operation: AMQPOperation = channel == Self.publishChannel
                ? .other("publish") : .consume(self.consumers.values.first { $0.channel == channel }?.registration.queue ?? "?")
            let error = BrokerErrorTranslator.error(replyCode: close.reply_code, replyText: close.reply_text.string,
                                                    operation: operation, user: url.user, virtualHost: url.virtualHost)
            self.sendChannelCloseOk(channel)
            self.channelClosed(channel, error: error)
        case CRMQ_CONNECTION_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let url = self.configuration.url
            let error = BrokerErrorTranslator.error(replyCode: close.reply_code, replyText: close.reply_text.string,
                                                    operation: .other("keep the connection open"),
                                                    user: url.user, virtualHost: url.virtualHost)
            self.sendConnectionCloseOk()
            self.connectionFailed(error)
        case CRMQ_CONNECTION_BLOCKED:
            let blocked = method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            self.blocked = true
            self.logger.warning("amqp broker blocks publishing; publishes wait", metadata: ["reason": "\(blocked.reason.string)"])
        case CRMQ_CONNECTION_UNBLOCKED:
            self.blocked = false
            self.logger.info("amqp broker unblocked publishing")
        default:
            self.logger.debug("amqp ignored method", metadata: ["amqp.method": "\(method.id)", "amqp.channel": "\(channel)"])
        }
    }

    /// Reads the header and body frames that follow basic.deliver or basic.return.
    private func readContent(channel: UInt16) -> (AMQPProperties, [UInt8])? {
        guard let connection = self.connection else { return nil }
        var message = amqp_message_t()
        let reply = self.guarded("read message") { amqp_read_message(connection, channel, &message, 0) }
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            self.connectionFailed(AMQPError(.connectionLost, "could not read a message body: "
                                            + Self.libraryMessage(reply.library_error)))
            return nil
        }
        defer { amqp_destroy_message(&message) }
        return (AMQPProperties(message.properties), message.body.array)
    }

    private func handleDeliver(channel: UInt16, _ deliver: amqp_basic_deliver_t) {
        let tag = deliver.delivery_tag
        let redelivered = deliver.redelivered != 0
        let exchange = deliver.exchange.string
        let routingKey = deliver.routing_key.string
        guard let (properties, body) = self.readContent(channel: channel) else { return }
        guard let id = self.consumers.first(where: { $0.value.channel == channel && $0.value.epoch != 0 })?.key,
              let state = self.consumers[id] else {
            self.logger.warning("amqp delivery for an unknown consumer channel", metadata: ["amqp.channel": "\(channel)"])
            return
        }
        let delivery = Delivery(body: body, properties: properties, exchange: exchange, routingKey: routingKey,
                                queue: state.registration.queue, redelivered: redelivered, deliveryTag: tag,
                                channelRef: ChannelRef(number: channel, epoch: state.epoch), settler: self.settler)
        if case .terminated = state.registration.continuation.yield(delivery) {
            // Nobody will handle it any more (the consumer was cancelled): give it back at once.
            if let connection = self.connection {
                _ = self.guarded("basic.reject") { amqp_basic_reject(connection, channel, tag, 1) }
            }
            return
        }
        self.consumers[id]?.unsettled.append(tag)
    }

    private func handleConfirm(channel: UInt16, tag: UInt64, multiple: Bool, nack: Bool) {
        guard channel == Self.publishChannel else { return }
        for (request, outcome) in self.confirms.settle(tag: tag, multiple: multiple, nack: nack) {
            switch outcome {
            case .confirmed:
                request.complete(.success(()))
            case .returned(let info):
                request.fail(AMQPError(.unroutable,
                    "the broker returned the message published to exchange '\(info.exchange)' with routing key "
                    + "'\(info.routingKey)' (\(info.replyCode) \(info.replyText)): no queue is bound to receive it. "
                    + "The topology is incomplete: declare the consumer queues and bind them to the exchange "
                    + "(the producer declares them at startup).", replyCode: info.replyCode))
            case .nacked:
                request.fail(AMQPError(.nacked,
                    "the broker refused responsibility for the message published to exchange '\(request.exchange)' "
                    + "(basic.nack: a queue rejected it, e.g. overflow reject-publish, or the broker failed "
                    + "internally); retry it later."))
            }
        }
    }

    private func handleReturn(channel: UInt16, _ returned: amqp_basic_return_t) {
        let info = ReturnInfo(replyCode: returned.reply_code, replyText: returned.reply_text.string,
                              exchange: returned.exchange.string, routingKey: returned.routing_key.string)
        guard let (properties, _) = self.readContent(channel: channel), channel == Self.publishChannel else { return }
        let matched = self.confirms.markReturned(info) { request in
            request.exchange == info.exchange && request.routingKey == info.routingKey
                && request.message.properties.messageID == properties.messageID
        }
        self.logger.warning("amqp message returned as unroutable", metadata: [
            "amqp.exchange": "\(info.exchange)", "amqp.routing_key": "\(info.routingKey)",
            "amqp.message_id": "\(properties.messageID ?? "")", "amqp.matched": "\(matched)",
        ])
    }

    private func handleServerCancel(channel: UInt16, consumerTag: String) {
        guard let id = self.consumers.first(where: { $0.value.channel == channel })?.key else { return }
        self.consumers[id]?.subscribed = false
        self.consumers[id]?.consumerTag = nil
        self.consumers[id]?.scheduleRetry(backoff: self.configuration.reconnectBackoff)
        self.logger.warning("amqp consumer cancelled by the broker (queue deleted or unavailable); re-subscribing",
                            metadata: ["amqp.queue": "\(self.consumers[id]?.registration.queue ?? "")",
                                       "amqp.consumer_tag": "\(consumerTag)"])
    }

    /// Sends queued publishes while the confirm window has room.
    func flushPublishes() {
        guard self.connection != nil, !self.blocked, !self.unsent.isEmpty else { return }
        if !self.publishChannelOpen {
            do { try self.openPublishChannel() } catch { return }
        }
        let now = ContinuousClock.now
        while self.connection != nil, self.confirms.outstanding < self.configuration.confirmWindow,
              let request = self.unsent.popFirst() {
            if request.deadline <= now {
                request.fail(self.unsentTimeout(request))
                continue
            }
            self.send(request)
        }
    }

    private func send(_ request: PublishRequest) {
        guard let connection = self.connection else { return }
        defer { self.arena.reset() }
        var properties = request.message.properties.cValue(arena: self.arena)
        let exchange = self.arena.bytes(request.exchange)
        let routingKey = self.arena.bytes(request.routingKey)
        let status = request.message.body.withUnsafeBytes { body in
            self.guarded("basic.publish", limit: self.configuration.operationTimeout) {
                amqp_basic_publish(connection, Self.publishChannel, exchange, routingKey, request.mandatory ? 1 : 0, 0,
                                   &properties, amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress)))
            }
        }
        // Registered even if sending failed: part of it may have reached the broker, so the
        // connection failure below answers it as "may or may not have been delivered".
        self.confirms.register(request)
        if status != AMQP_STATUS_OK.rawValue {
            self.connectionFailed(AMQPError(.connectionLost, "could not send a publish: " + Self.libraryMessage(status)))
        }
    }

    func unsentTimeout(_ request: PublishRequest) -> AMQPError {
        let reason: String
        if self.connection == nil {
            reason = "not connected to the broker (last error: \(self.lastError?.message ?? "none"))"
        } else if self.blocked {
            reason = "the broker is blocking publishers (memory or disk alarm)"
        } else {
            reason = "the confirm window stayed full"
        }
        return AMQPError(.timeout, "could not send the publish to exchange '\(request.exchange)' within "
                         + "\(self.configuration.publishTimeout): \(reason). It was not sent; retry it later.")
    }
}

extension AMQPProperties {
    init(_ properties: amqp_basic_properties_t) {
        let flags = properties._flags
        func has(_ flag: amqp_flags_t) -> Bool { flags & flag != 0 }
        self.init(
            contentType: has(CRMQ_FLAG_CONTENT_TYPE) ? properties.content_type.string : nil,
            contentEncoding: has(CRMQ_FLAG_CONTENT_ENCODING) ? properties.content_encoding.string : nil,
            messageID: has(CRMQ_FLAG_MESSAGE_ID) ? properties.message_id.string : nil,
            correlationID: has(CRMQ_FLAG_CORRELATION_ID) ? properties.correlation_id.string : nil,
            type: has(CRMQ_FLAG_TYPE) ? properties.type.string : nil,
            appID: has(CRMQ_FLAG_APP_ID) ? properties.app_id.string : nil,
            timestamp: has(CRMQ_FLAG_TIMESTAMP) ? properties.timestamp : nil,
            expiration: has(CRMQ_FLAG_EXPIRATION) ? properties.expiration.string : nil,
            deliveryMode: has(CRMQ_FLAG_DELIVERY_MODE) ? properties.delivery_mode : nil,
            headers: has(CRMQ_FLAG_HEADERS) ? FieldTableDecoder.decode(properties.headers) : [:]
        )
    }

    func cValue(arena: CArena) -> amqp_basic_properties_t {
        var properties = amqp_basic_properties_t()
        var flags: amqp_flags_t = 0
        if let contentType { flags |= CRMQ_FLAG_CONTENT_TYPE; properties.content_type = arena.bytes(contentType) }
        if let contentEncoding {
            flags |= CRMQ_FLAG_CONTENT_ENCODING
            properties.content_encoding = arena.bytes(contentEncoding)
        }
        if let messageID { flags |= CRMQ_FLAG_MESSAGE_ID; properties.message_id = arena.bytes(messageID) }
        if let correlationID { flags |= CRMQ_FLAG_CORRELATION_ID; properties.correlation_id = arena.bytes(correlationID) }
        if let type { flags |= CRMQ_FLAG_TYPE; properties.type = arena.bytes(type) }
        if let appID { flags |= CRMQ_FLAG_APP_ID; properties.app_id = arena.bytes(appID) }
        if let timestamp { flags |= CRMQ_FLAG_TIMESTAMP; properties.timestamp = timestamp }
        if let expiration { flags |= CRMQ_FLAG_EXPIRATION; properties.expiration = arena.bytes(expiration) }
        if let deliveryMode { flags |= CRMQ_FLAG_DELIVERY_MODE; properties.delivery_mode = deliveryMode }
        if !headers.isEmpty { flags |= CRMQ_FLAG_HEADERS; properties.headers = arena.table(headers) }
        properties._flags = flags
        return properties
    }
}
