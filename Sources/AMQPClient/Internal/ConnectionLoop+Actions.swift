import CRabbitMQ
import DequeModule
import Foundation
import Logging

extension ConnectionLoop {
    typealias Action = ConnectionStateMachine.Action
    typealias BrokerMethod = ConnectionStateMachine.BrokerMethod
    typealias RPCOutcome = ConnectionStateMachine.RPCOutcome
    typealias RPCResult = ConnectionStateMachine.RPCResult

    /// Performs actions in order; the outcome of one that awaits it (always the last of its list)
    /// goes to the machine and the actions that returns are performed next. A loop, not
    /// recursion: re-declaring a large topology is one step per entity.
    func perform(_ actions: [Action]) {
        var queue = Deque(actions)
        while let action = queue.popFirst() {
            queue.append(contentsOf: self.perform(action))
        }
    }

    private func perform(_ action: Action) -> [Action] {
        switch action {
        case .answer(let answer):
            answer.give()
        case .log(let level, let message, let metadata):
            self.logger.log(level: level, message, metadata: metadata)
        case .shutDown:
            self.watchdog.stop()
            for command in self.mailbox.shutDown() {
                self.perform(self.machine.refusal(of: command, with: Self.closedError))
            }
            self.finished = true
        case .sendChannelCloseOk(let channel):
            guard let connection = self.connection else { break }
            var closeOk = amqp_channel_close_ok_t(dummy: 0)
            _ = self.guarded("channel.close-ok") { amqp_send_method(connection, channel, CRMQ_CHANNEL_CLOSE_OK, &closeOk) }
        case .sendConnectionCloseOk:
            guard let connection = self.connection else { break }
            var closeOk = amqp_connection_close_ok_t(dummy: 0)
            _ = self.guarded("connection.close-ok") { amqp_send_method(connection, 0, CRMQ_CONNECTION_CLOSE_OK, &closeOk) }
        case .destroyConnection:
            self.destroyConnection()
        case .closeConnection:
            if let connection = self.connection {
                _ = self.guarded("connection.close") { amqp_connection_close(connection, AMQP_REPLY_SUCCESS) }
            }
            self.destroyConnection()
        case .requeue(let channel, let tag):
            guard let connection = self.connection else { break }
            _ = self.guarded("basic.reject") { amqp_basic_reject(connection, channel, tag, 1) }
        case .connect(let url):
            do {
                let channelMax = try self.open(url)
                return self.machine.connected(negotiatedChannelMax: channelMax, now: .now)
            } catch {
                return self.machine.connectFailed(error, now: .now)
            }
        case .rpc(let method):
            let outcome = self.call(method)
            return self.machine.rpcFinished(outcome, now: .now)
        case .publish(let request):
            let status = self.send(request)
            guard status == AMQP_STATUS_OK.rawValue else {
                return self.machine.publishFailed(libraryMessage: Self.libraryMessage(status), now: .now)
            }
        case .settle(let settlement, let channel, let tag, let reply):
            let status = self.sendSettlement(settlement, channel: channel, tag: tag)
            guard status == AMQP_STATUS_OK.rawValue else {
                return self.machine.settleFailed(reply, libraryMessage: Self.libraryMessage(status), now: .now)
            }
            reply.resume()
        case .deliver(let content, let channel, let continuation):
            if case .terminated = continuation.yield(self.makeDelivery(content, channel: channel)) {
                return self.machine.deliveryRefused(channel, tag: content.tag)
            }
        }
        return []
    }

    func destroyConnection() {
        guard let connection = self.connection else { return }
        self.watchdog.setSocket(-1)
        amqp_destroy_connection(connection)
        self.connection = nil
    }

    private func sendSettlement(_ settlement: Settlement, channel: UInt16, tag: UInt64) -> Int32 {
        guard let connection = self.connection else { return AMQP_STATUS_SOCKET_CLOSED.rawValue }
        switch settlement {
        case .ack(let multiple):
            return self.guarded("basic.ack") { amqp_basic_ack(connection, channel, tag, multiple ? 1 : 0) }
        case .reject(let requeue):
            return self.guarded("basic.reject") { amqp_basic_reject(connection, channel, tag, requeue ? 1 : 0) }
        }
    }

    private func send(_ request: PublishRequest) -> Int32 {
        guard let connection = self.connection else { return AMQP_STATUS_SOCKET_CLOSED.rawValue }
        defer { self.arena.reset() }
        var properties = request.message.properties.cValue(arena: self.arena)
        let exchange = self.arena.bytes(request.exchange)
        let routingKey = self.arena.bytes(request.routingKey)
        let channel = ConnectionStateMachine.publishChannel
        return request.message.body.withUnsafeBytes { body in
            self.guarded("basic.publish", limit: self.configuration.operationTimeout) {
                amqp_basic_publish(connection, channel, exchange, routingKey, request.mandatory ? 1 : 0, 0,
                                   &properties, amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress)))
            }
        }
    }

    // MARK: Method round trips

    /// Sends `method` and waits for its reply.
    func call(_ method: BrokerMethod) -> RPCOutcome {
        defer { self.arena.reset() }
        let channel = method.channel
        switch method {
        case .channelOpen:
            return self.rpc("channel.open", { amqp_channel_open($0, channel) }) { _ in .done }
        case .channelClose:
            guard let connection = self.connection else { return .libraryFailure("not connected to the broker") }
            let reply = self.guarded("channel.close") { amqp_channel_close(connection, channel, AMQP_REPLY_SUCCESS) }
            return reply.reply_type == AMQP_RESPONSE_NORMAL ? .ok(.done) : Self.failure(reply)
        case .confirmSelect:
            return self.rpc("confirm.select", { amqp_confirm_select($0, channel) }) { _ in .done }
        case .basicQos(_, let prefetch):
            return self.rpc("basic.qos", { amqp_basic_qos($0, channel, 0, prefetch, 0) }) { _ in .done }
        case .basicConsume(_, let queue):
            let queueBytes = self.arena.bytes(queue)
            return self.rpc("basic.consume", {
                amqp_basic_consume($0, channel, queueBytes, amqp_empty_bytes, 0, 0, 0, amqp_empty_table)
            }) { .consumerTag($0.consumer_tag.string) }
        case .basicCancel(_, let consumerTag):
            let tag = self.arena.bytes(consumerTag)
            return self.rpc("basic.cancel", { amqp_basic_cancel($0, channel, tag) }) { _ in .done }
        case .exchangeDeclare(let spec):
            let name = self.arena.bytes(spec.name)
            let kind = self.arena.bytes(spec.kind.rawValue)
            let arguments = self.arena.table(spec.arguments)
            return self.rpc("exchange.declare", {
                amqp_exchange_declare($0, channel, name, kind, 0, spec.durable ? 1 : 0, spec.autoDelete ? 1 : 0, 0, arguments)
            }) { _ in .done }
        case .exchangeDelete(let name):
            let exchange = self.arena.bytes(name)
            return self.rpc("exchange.delete", { amqp_exchange_delete($0, channel, exchange, 0) }) { _ in .done }
        case .queueDeclare(let spec):
            let name = self.arena.bytes(spec.name)
            let arguments = self.arena.table(spec.arguments.table)
            return self.rpc("queue.declare", {
                amqp_queue_declare($0, channel, name, 0, spec.durable ? 1 : 0, spec.exclusive ? 1 : 0,
                                   spec.autoDelete ? 1 : 0, arguments)
            }) { .queue(name: $0.queue.string, messageCount: Int($0.message_count), consumerCount: Int($0.consumer_count)) }
        case .queueInspect(let name):
            let queue = self.arena.bytes(name)
            return self.rpc("queue.declare (passive)", { amqp_queue_declare($0, channel, queue, 1, 0, 0, 0, amqp_empty_table) }) {
                .queue(name: name, messageCount: Int($0.message_count), consumerCount: Int($0.consumer_count))
            }
        case .queueBind(let spec), .queueUnbind(let spec):
            let queue = self.arena.bytes(spec.queue)
            let exchange = self.arena.bytes(spec.exchange)
            let routingKey = self.arena.bytes(spec.routingKey)
            let arguments = self.arena.table(spec.arguments)
            if case .queueUnbind = method {
                return self.rpc("queue.unbind", { amqp_queue_unbind($0, channel, queue, exchange, routingKey, arguments) }) { _ in .done }
            }
            return self.rpc("queue.bind", { amqp_queue_bind($0, channel, queue, exchange, routingKey, arguments) }) { _ in .done }
        case .queueDelete(let name, let ifEmpty):
            let queue = self.arena.bytes(name)
            return self.rpc("queue.delete", { amqp_queue_delete($0, channel, queue, 0, ifEmpty ? 1 : 0) }) {
                .messageCount(Int($0.message_count))
            }
        case .queuePurge(let name):
            let queue = self.arena.bytes(name)
            return self.rpc("queue.purge", { amqp_queue_purge($0, channel, queue) }) { .messageCount(Int($0.message_count)) }
        }
    }

    /// Runs a synchronous librabbitmq RPC and reports how it ended.
    private func rpc<Reply>(_ name: String, _ call: (amqp_connection_state_t) -> UnsafeMutablePointer<Reply>?,
                            result: (Reply) -> RPCResult) -> RPCOutcome {
        guard let connection = self.connection else { return .libraryFailure("not connected to the broker") }
        if let reply = self.guarded(name, { call(connection) }) { return .ok(result(reply.pointee)) }
        return Self.failure(amqp_get_rpc_reply(connection))
    }

    /// A failed RPC reply as an outcome: the broker's close (channel or connection) or a library error.
    static func failure(_ reply: amqp_rpc_reply_t) -> RPCOutcome {
        switch reply.reply_type {
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == CRMQ_CHANNEL_CLOSE:
            let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            return .channelClosed(replyCode: close.reply_code, replyText: close.reply_text.string)
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == CRMQ_CONNECTION_CLOSE:
            let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            return .connectionClosed(replyCode: close.reply_code, replyText: close.reply_text.string)
        default:
            return .libraryFailure(Self.libraryMessage(reply.library_error))
        }
    }
}
