import Logging

extension ConnectionStateMachine {
    // MARK: Connecting

    /// The outcome of `Action.connect`: logged in; the broker allows channels up to
    /// `negotiatedChannelMax` (0 means no limit).
    mutating func connected(negotiatedChannelMax: Int, now: ContinuousClock.Instant) -> [Action] {
        guard self.phase == .connecting else { return [] }
        self.channelLimit = negotiatedChannelMax > 0
            ? UInt16(clamping: min(negotiatedChannelMax, Int(Self.channelMax))) : Self.channelMax
        self.phase = .settingUp
        self.connectionCount += 1
        self.reconnectAttempt = 0
        self.lastError = nil
        self.blocked = false
        self.quarantinedChannels.removeAll()
        let replaying = self.connectionCount > 1
        var steps = [Self.openControlChannelStep] + Self.openPublishChannelSteps
        if replaying { steps += self.replaySteps() }
        let actions: [Action] = [.log(.info, "amqp connected", [
            "amqp.connection_count": "\(self.connectionCount)",
            "amqp.address": "\(self.address.host):\(self.address.port)",
        ])]
        return actions + self.begin(Job(kind: .establish(replaying: replaying), steps: steps), now: now)
    }

    /// Re-declares what this connection declared before. An entity that can no longer be declared
    /// (an operator changed it meanwhile) is logged and skipped, so one bad queue does not keep
    /// the whole connection down; only a lost connection aborts the replay.
    private func replaySteps() -> [Step] {
        self.topology.exchanges.map { Step(method: .exchangeDeclare($0), operation: .declareExchange($0.name), tolerant: true) }
            + self.topology.queues.map { Step(method: .queueDeclare($0), operation: .declareQueue($0.name), tolerant: true) }
            + self.topology.bindings.map {
                Step(method: .queueBind($0), operation: .bind(queue: $0.queue, exchange: $0.exchange), tolerant: true)
            }
    }

    /// The outcome of `Action.connect`: no connection (the executor has freed what it made).
    mutating func connectFailed(_ error: AMQPError, now: ContinuousClock.Instant) -> [Action] {
        guard self.phase == .connecting else { return [] }
        self.lastError = error
        if self.initialReply != nil {
            return self.initialAttemptFailed(error, now: now)
        }
        let attempt = self.reconnectAttempt
        let delay = self.scheduleReconnect(now: now)
        return [.log(.warning, "amqp reconnect failed", [
            "error": "\(error.message)", "amqp.retry_in": "\(delay)", "amqp.attempt": "\(attempt + 1)",
            "amqp.next_address": "\(self.address.host):\(self.address.port)",
        ])]
    }

    /// The first connection failed at the current address, refused or broken before it was set
    /// up. Every address is tried once, at once, so a service starting while one node of a
    /// cluster is down connects to another; only when all failed does `connect` fail, naming
    /// each address and its reason.
    private mutating func initialAttemptFailed(_ error: AMQPError, now: ContinuousClock.Instant) -> [Action] {
        guard let initial = self.initialReply else { return [] }
        let endpoint = "\(self.address.host):\(self.address.port)"
        self.initialFailures.append("\(endpoint): \(error.message)")
        if self.initialFailures.count < self.settings.addresses.count {
            self.addressIndex = (self.addressIndex + 1) % self.settings.addresses.count
            self.phase = .disconnected(retryAt: now)
            return [.log(.warning, "amqp connect failed; trying the next broker", [
                "error": "\(error.message)", "amqp.address": "\(endpoint)",
                "amqp.next_address": "\(self.address.host):\(self.address.port)",
            ])]
        }
        self.initialReply = nil
        self.phase = .finished
        let failure = self.initialFailures.count > 1
            ? AMQPError(error.code, "no broker in the list accepted a connection: "
                        + self.initialFailures.joined(separator: "; "), replyCode: error.replyCode)
            : error
        return [.answer(.void(initial, .failure(failure))), .shutDown]
    }

    /// Waits before the next attempt, which goes to the next address in the list.
    private mutating func scheduleReconnect(now: ContinuousClock.Instant) -> Duration {
        let delay = self.settings.reconnectBackoff.delay(attempt: self.reconnectAttempt, random: self.random())
        self.reconnectAttempt += 1
        self.addressIndex = (self.addressIndex + 1) % self.settings.addresses.count
        self.phase = .disconnected(retryAt: now + delay)
        return delay
    }

    // MARK: Losing the connection

    /// Tears the connection down after a failure and schedules a reconnect. Unconfirmed publishes
    /// fail with a retryable error; deliveries not yet settled will be redelivered by the broker.
    /// The job in flight fails with `jobError` (default `error`): a `.connectionLost` code keeps
    /// its work queued for the next connection.
    mutating func connectionLost(_ error: AMQPError, jobError: AMQPError? = nil,
                                 now: ContinuousClock.Instant) -> [Action] {
        guard self.hasConnection else { return [] }
        var actions: [Action] = [.log(.warning, "amqp connection lost", ["error": "\(error.message)"]), .destroyConnection]
        self.lastError = error
        self.controlChannelOpen = false
        self.publishChannelOpen = false
        self.publishChannelRetryAt = nil
        self.blocked = false
        self.quarantinedChannels.removeAll()
        self.channelsToClose.removeAll()
        let lost = AMQPError(.connectionLost, "the connection to the broker was lost (\(error.message)) before the broker "
                             + "confirmed this publish; it may or may not have been delivered. Retry it: consumers "
                             + "must treat duplicates as normal.", underlying: error)
        for request in self.confirms.reset() { actions.append(.answer(.publish(request, .failure(lost)))) }
        for id in self.consumers.keys.sorted() {
            self.consumers[id]?.channelLost()
            if let state = self.consumers[id], state.cancelled {
                self.consumers[id] = nil
                actions += self.retire(state)
            }
        }
        if self.initialReply != nil {
            // The first connection broke while being set up: nothing else waits; the next
            // address is tried, or `connect` fails once every one has been.
            self.job = nil
            return actions + self.initialAttemptFailed(jobError ?? error, now: now)
        }
        _ = self.scheduleReconnect(now: now)
        if let job = self.job {
            self.job = nil
            actions += self.failed(job, error: jobError ?? error, now: now)
        }
        return actions
    }

    /// The broker closed `channel` (after it was answered with close-ok): forget its state.
    mutating func channelClosed(_ channel: UInt16, error: AMQPError, now: ContinuousClock.Instant) -> [Action] {
        switch channel {
        case Self.controlChannel:
            self.controlChannelOpen = false
            return []
        case Self.publishChannel:
            self.publishChannelOpen = false
            let missingExchange = Self.missingExchange(in: error)
            var actions: [Action] = self.confirms.reset().map { request in
                if error.code == .notFound, let missingExchange, request.exchange == missingExchange {
                    return .answer(.publish(request, .failure(AMQPError(.notFound,
                        "could not publish to exchange '\(request.exchange)': it does not exist in vhost "
                        + "'\(self.address.virtualHost)'. Declare it first (the producer declares the "
                        + "topology at startup).", replyCode: error.replyCode))))
                }
                return .answer(.publish(request, .failure(AMQPError(.channelClosed,
                    "the broker closed the publishing channel (\(error.message)) before confirming this "
                    + "publish to '\(request.exchange)'; retry it.", underlying: error))))
            }
            actions.append(.log(.warning, "amqp publishing channel closed by the broker", ["error": "\(error.message)"]))
            return actions
        default:
            guard let id = self.consumers.id(onChannel: channel),
                  var state = self.consumers[id] else { return [] }
            state.channelLost()
            state.scheduleRetry(backoff: self.settings.reconnectBackoff, now: now, random: self.random())
            if state.cancelled {
                self.consumers[id] = nil
                return self.retire(state)
            }
            self.consumers[id] = state
            return [.log(.warning, "amqp consumer channel closed by the broker; re-subscribing", [
                "amqp.queue": "\(state.registration.queue)", "error": "\(error.message)",
            ])]
        }
    }

    /// "no exchange 'x' in vhost '/'" → "x".
    static func missingExchange(in error: AMQPError) -> String? {
        guard let start = error.message.range(of: "no exchange '") else { return nil }
        let rest = error.message[start.upperBound...]
        return rest.firstIndex(of: "'").map { String(rest[..<$0]) }
    }

    /// The outcome of `Action.publish` when the library could not send it.
    mutating func publishFailed(libraryMessage: String, now: ContinuousClock.Instant) -> [Action] {
        self.connectionLost(AMQPError(.connectionLost, "could not send a publish: \(libraryMessage)"), now: now)
    }

    /// Reading a frame failed (socket error, or no heartbeat from the broker).
    mutating func readFailed(heartbeatMissed: Bool, libraryMessage: String, now: ContinuousClock.Instant) -> [Action] {
        let reason = heartbeatMissed ? "no heartbeat from the broker for \(self.settings.heartbeat * 2)" : libraryMessage
        return self.connectionLost(AMQPError(.connectionLost, reason), now: now)
    }

    /// Reading the body of a delivered or returned message failed.
    mutating func contentReadFailed(libraryMessage: String, now: ContinuousClock.Instant) -> [Action] {
        self.connectionLost(AMQPError(.connectionLost, "could not read a message body: \(libraryMessage)"), now: now)
    }

    // MARK: Deadlines and closing

    mutating func expireDeadlines(now: ContinuousClock.Instant) -> [Action] {
        var actions: [Action] = []
        for request in self.confirms.expire(where: { $0.deadline <= now }) {
            actions.append(.answer(.publish(request, .failure(AMQPError(.confirmTimeout,
                "the broker did not confirm the publish to exchange '\(request.exchange)' within "
                + "\(self.settings.publishTimeout); it may still be delivered. Retry it: consumers must treat "
                + "duplicates as normal.")))))
        }
        while let first = self.unsent.first, first.deadline <= now {
            self.unsent.removeFirst()
            actions.append(.answer(.publish(first, .failure(self.unsentTimeout(first)))))
        }
        while let first = self.pendingOperations.first, first.deadline <= now {
            self.pendingOperations.removeFirst()
            actions.append(Self.answer(first.operation, with: .failure(AMQPError(.timeout,
                "could not complete the broker operation within \(self.settings.operationTimeout): not connected "
                + "(last error: \(self.lastErrorText))"))))
        }
        for id in self.consumers.keys.sorted() {
            guard let state = self.consumers[id], let reply = state.pendingReply,
                  let deadline = state.pendingDeadline, deadline <= now else { continue }
            self.consumers[id] = nil
            actions.append(.answer(.finish(state.registration.continuation)))
            actions.append(.answer(.void(reply, .failure(AMQPError(.timeout,
                "could not subscribe to queue '\(state.registration.queue)' within \(self.settings.operationTimeout): "
                + "not connected (last error: \(self.lastErrorText))")))))
        }
        return actions
    }

    func unsentTimeout(_ request: PublishRequest) -> AMQPError {
        let reason: String
        if !self.hasConnection {
            reason = "not connected to the broker (last error: \(self.lastErrorText))"
        } else if self.blocked {
            reason = "the broker is blocking publishers (memory or disk alarm)"
        } else {
            reason = "the confirm window stayed full"
        }
        return AMQPError(.timeout, "could not send the publish to exchange '\(request.exchange)' within "
                         + "\(self.settings.publishTimeout): \(reason). It was not sent; retry it later.")
    }

    /// Finishes a graceful close once everything in flight is settled, or at the drain deadline.
    mutating func advanceClosing(now: ContinuousClock.Instant) -> [Action] {
        guard let closing = self.closing else { return [] }
        let drained = self.confirms.isEmpty && self.unsent.isEmpty && self.consumers.isEmpty
        guard drained || !self.hasConnection || now >= closing.deadline else { return [] }
        var actions: [Action] = []
        let abandoned = AMQPError(.closed, "the connection was closed before the broker confirmed this publish; it may "
                                  + "or may not have been delivered")
        for request in self.confirms.reset() { actions.append(.answer(.publish(request, .failure(abandoned)))) }
        while let request = self.unsent.popFirst() { actions.append(.answer(.publish(request, .failure(Self.closedError)))) }
        while let pending = self.pendingOperations.popFirst() {
            actions.append(Self.answer(pending.operation, with: .failure(Self.closedError)))
        }
        for id in self.consumers.keys.sorted() {
            if let state = self.consumers[id] { actions += self.retire(state) }
        }
        self.consumers.removeAll()
        if self.hasConnection { actions.append(.closeConnection) }
        self.phase = .finished
        self.closing = nil
        actions.append(.shutDown)
        actions.append(.log(.info, "amqp connection closed", ["amqp.drained": "\(drained)"]))
        for reply in closing.replies { actions.append(.answer(.void(reply, .success(())))) }
        return actions
    }
}
