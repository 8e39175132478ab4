import Logging

extension ConnectionStateMachine {
    /// basic.deliver with its content. The tag counts as unsettled from here; if the consumer's
    /// stream has ended the executor reports `deliveryRefused` and the message goes back.
    mutating func delivered(channel: UInt16, tag: UInt64, redelivered: Bool, exchange: String, routingKey: String,
                            properties: AMQPProperties, body: [UInt8]) -> [Action] {
        let route = self.consumers.id(onChannel: channel).flatMap { id in
            self.consumers.update(id) { state -> (epoch: UInt64, registration: ConsumerRegistration)? in
                guard state.epoch != 0 else { return nil }
                state.unsettled.append(tag)
                return (state.epoch, state.registration)
            } ?? nil
        }
        guard let route else {
            return [.log(.warning, "amqp delivery for an unknown consumer channel", ["amqp.channel": "\(channel)"])]
        }
        let content = DeliveryContent(body: body, properties: properties, exchange: exchange, routingKey: routingKey,
                                      queue: route.registration.queue, redelivered: redelivered, tag: tag)
        return [.deliver(content, ChannelRef(number: channel, epoch: route.epoch), route.registration.continuation)]
    }

    /// The outcome of `Action.deliver` when nobody will handle the delivery any more (the consumer
    /// was cancelled): give it back at once.
    mutating func deliveryRefused(_ channel: ChannelRef, tag: UInt64) -> [Action] {
        if let id = self.consumers.id(onChannel: channel.number) {
            _ = self.consumers.update(id) { state in
                if state.epoch == channel.epoch { state.settled(tag: tag, multiple: false) }
            }
        }
        return [.requeue(channel: channel.number, tag: tag)]
    }

    /// basic.ack or basic.nack of publisher confirms.
    mutating func confirmed(channel: UInt16, tag: UInt64, multiple: Bool, nack: Bool) -> [Action] {
        guard channel == Self.publishChannel else { return [] }
        return self.confirms.settle(tag: tag, multiple: multiple, nack: nack).map { request, outcome in
            switch outcome {
            case .confirmed:
                return .answer(.publish(request, .success(())))
            case .returned(let info):
                return .answer(.publish(request, .failure(AMQPError(.unroutable,
                    "the broker returned the message published to exchange '\(info.exchange)' with routing key "
                    + "'\(info.routingKey)' (\(info.replyCode) \(info.replyText)): no queue is bound to receive it. "
                    + "The topology is incomplete: declare the consumer queues and bind them to the exchange "
                    + "(the producer declares them at startup).", replyCode: info.replyCode))))
            case .nacked:
                return .answer(.publish(request, .failure(AMQPError(.nacked,
                    "the broker refused responsibility for the message published to exchange '\(request.exchange)' "
                    + "(basic.nack: a queue rejected it, e.g. overflow reject-publish, or the broker failed "
                    + "internally); retry it later."))))
            }
        }
    }

    /// basic.return (its content already read): the publish it matches fails as unroutable once
    /// its confirm arrives.
    mutating func returned(channel: UInt16, _ info: ReturnInfo, messageID: String?) -> [Action] {
        guard channel == Self.publishChannel else { return [] }
        let matched = self.confirms.markReturned(info) { request in
            request.exchange == info.exchange && request.routingKey == info.routingKey
                && request.message.properties.messageID == messageID
        }
        return [.log(.warning, "amqp message returned as unroutable", [
            "amqp.exchange": "\(info.exchange)", "amqp.routing_key": "\(info.routingKey)",
            "amqp.message_id": "\(messageID ?? "")", "amqp.matched": "\(matched)",
        ])]
    }

    /// basic.cancel from the broker (queue deleted or unavailable): subscribe again later.
    mutating func consumerCancelledByBroker(channel: UInt16, consumerTag: String, now: ContinuousClock.Instant) -> [Action] {
        guard let id = self.consumers.id(onChannel: channel),
              var state = self.consumers[id] else { return [] }
        state.subscribed = false
        state.consumerTag = nil
        state.cancelPending = false
        state.scheduleRetry(backoff: self.settings.reconnectBackoff, now: now, random: self.random())
        self.consumers[id] = state
        var actions: [Action] = [.log(.warning,
            "amqp consumer cancelled by the broker (queue deleted or unavailable); re-subscribing",
            ["amqp.queue": "\(state.registration.queue)", "amqp.consumer_tag": "\(consumerTag)"])]
        // A cancel of ours that the broker's overtook: nothing left to send.
        if !state.cancelReplies.isEmpty {
            actions += state.cancelReplies.map { .answer(.void($0, .success(()))) }
            self.consumers[id]?.cancelReplies = []
        }
        return actions
    }

    /// channel.close from the broker outside a method round trip.
    mutating func channelClosedByBroker(channel: UInt16, replyCode: UInt16, replyText: String,
                                        now: ContinuousClock.Instant) -> [Action] {
        let operation: AMQPOperation = channel == Self.publishChannel
            ? .other("publish")
            : .consume(self.consumers.id(onChannel: channel).flatMap { self.consumers[$0]?.registration.queue } ?? "?")
        let error = self.brokerError(replyCode: replyCode, replyText: replyText, operation: operation)
        return [.sendChannelCloseOk(channel)] + self.channelClosed(channel, error: error, now: now)
    }

    /// connection.close from the broker outside a method round trip.
    mutating func connectionClosedByBroker(replyCode: UInt16, replyText: String, now: ContinuousClock.Instant) -> [Action] {
        let error = self.brokerError(replyCode: replyCode, replyText: replyText,
                                     operation: .other("keep the connection open"))
        return [.sendConnectionCloseOk] + self.connectionLost(error, now: now)
    }

    mutating func blocked(reason: String) -> [Action] {
        self.blocked = true
        return [.log(.warning, "amqp broker blocks publishing; publishes wait", ["reason": "\(reason)"])]
    }

    mutating func unblocked() -> [Action] {
        self.blocked = false
        return [.log(.info, "amqp broker unblocked publishing", [:])]
    }
}
