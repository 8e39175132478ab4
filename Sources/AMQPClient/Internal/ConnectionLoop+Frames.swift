import CRabbitMQ
import Foundation
import Logging

extension ConnectionLoop {
    /// Reads frames and hands each to the machine; the first wait uses `timeout`, later ones
    /// don't wait. Bounded so a flood of deliveries cannot starve the command queue.
    func readFrames(timeout: timeval) {
        var wait = timeout
        for _ in 0..<512 {
            guard let connection = self.connection else { return }
            var frame = amqp_frame_t()
            let status = self.guarded("read frame") { amqp_simple_wait_frame_noblock(connection, &frame, &wait) }
            if status == AMQP_STATUS_TIMEOUT.rawValue { return }
            guard status == AMQP_STATUS_OK.rawValue else {
                self.perform(self.machine.readFailed(heartbeatMissed: status == AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue,
                                                     libraryMessage: Self.libraryMessage(status), now: .now))
                return
            }
            wait = timeval(tv_sec: 0, tv_usec: 0)
            self.perform(self.event(for: frame))
            if let connection = self.connection { amqp_maybe_release_buffers_on_channel(connection, frame.channel) }
        }
    }

    /// Decodes a frame (reading the content that follows a delivery or a return) into the
    /// machine's event for it.
    private func event(for frame: amqp_frame_t) -> [Action] {
        let channel = frame.channel
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else {
            return [.log(.debug, "amqp ignored a content frame outside a message", ["amqp.channel": "\(channel)"])]
        }
        let method = frame.payload.method
        switch method.id {
        case CRMQ_BASIC_DELIVER:
            let deliver = method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            let tag = deliver.delivery_tag
            let redelivered = deliver.redelivered != 0
            let exchange = deliver.exchange.string
            let routingKey = deliver.routing_key.string
            let content: (AMQPProperties, [UInt8])
            switch self.readContent(channel: channel) {
            case .success(let read): content = read
            case .failure(let status):
                return self.machine.contentReadFailed(libraryMessage: Self.libraryMessage(status.code), now: .now)
            }
            return self.machine.delivered(channel: channel, tag: tag, redelivered: redelivered, exchange: exchange,
                                          routingKey: routingKey, properties: content.0, body: content.1)
        case CRMQ_BASIC_ACK:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            return self.machine.confirmed(channel: channel, tag: ack.delivery_tag, multiple: ack.multiple != 0, nack: false)
        case CRMQ_BASIC_NACK:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            return self.machine.confirmed(channel: channel, tag: nack.delivery_tag, multiple: nack.multiple != 0, nack: true)
        case CRMQ_BASIC_RETURN:
            let returned = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let info = ReturnInfo(replyCode: returned.reply_code, replyText: returned.reply_text.string,
                                  exchange: returned.exchange.string, routingKey: returned.routing_key.string)
            switch self.readContent(channel: channel) {
            case .success(let (properties, _)):
                return self.machine.returned(channel: channel, info, messageID: properties.messageID)
            case .failure(let status):
                return self.machine.contentReadFailed(libraryMessage: Self.libraryMessage(status.code), now: .now)
            }
        case CRMQ_BASIC_CANCEL:
            let cancel = method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            return self.machine.consumerCancelledByBroker(channel: channel, consumerTag: cancel.consumer_tag.string,
                                                          now: .now)
        case CRMQ_CHANNEL_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            return self.machine.channelClosedByBroker(channel: channel, replyCode: close.reply_code,
                                                      replyText: close.reply_text.string, now: .now)
        case CRMQ_CONNECTION_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            return self.machine.connectionClosedByBroker(replyCode: close.reply_code, replyText: close.reply_text.string,
                                                         now: .now)
        case CRMQ_CONNECTION_BLOCKED:
            let blocked = method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            return self.machine.blocked(reason: blocked.reason.string)
        case CRMQ_CONNECTION_UNBLOCKED:
            return self.machine.unblocked()
        default:
            return [.log(.debug, "amqp ignored method", ["amqp.method": "\(method.id)", "amqp.channel": "\(channel)"])]
        }
    }

    /// Reads the header and body frames that follow basic.deliver or basic.return; the library
    /// status on failure.
    private func readContent(channel: UInt16) -> Result<(AMQPProperties, [UInt8]), LibraryStatus> {
        guard let connection = self.connection else { return .failure(LibraryStatus(AMQP_STATUS_SOCKET_CLOSED.rawValue)) }
        var message = amqp_message_t()
        let reply = self.guarded("read message") { amqp_read_message(connection, channel, &message, 0) }
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else { return .failure(LibraryStatus(reply.library_error)) }
        defer { amqp_destroy_message(&message) }
        return .success((AMQPProperties(message.properties), message.body.array))
    }

    /// A librabbitmq status code carried as an error.
    struct LibraryStatus: Error {
        var code: Int32
        init(_ code: Int32) { self.code = code }
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
