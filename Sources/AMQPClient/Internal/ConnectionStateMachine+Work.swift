import Logging

extension ConnectionStateMachine {
    /// The next piece of work, in the order a pass of the connection thread does it: reconnect,
    /// queued operations, (re)subscriptions, consumer cancels and channel closes, publishes, then
    /// expired deadlines and the end of a graceful close. Empty when there is nothing to do until
    /// a command, a frame or a deadline; the executor calls it until then.
    mutating func nextWork(now: ContinuousClock.Instant) -> [Action] {
        guard self.job == nil else { return [] }
        switch self.phase {
        case .idle, .connecting, .settingUp, .finished:
            break
        case .disconnected(let retryAt):
            if self.closing == nil, now >= retryAt {
                self.phase = .connecting
                return [.connect(self.address)]
            }
        case .connected:
            let actions = self.connectedWork(now: now)
            if !actions.isEmpty { return actions }
        }
        let expired = self.expireDeadlines(now: now)
        if !expired.isEmpty { return expired }
        return self.advanceClosing(now: now)
    }

    private mutating func connectedWork(now: ContinuousClock.Instant) -> [Action] {
        if let first = self.pendingOperations.first {
            return self.begin(Job(kind: .operation, steps: [Self.step(for: first.operation)]), now: now)
        }
        // Sorted once per call (this runs once per publish): lowest id first keeps the order stable.
        let ids = self.consumers.isEmpty ? [] : self.consumers.keys.sorted()
        for id in ids {
            guard let state = self.consumers[id], !state.subscribed, !state.cancelled,
                  state.retryAt.map({ $0 <= now }) ?? true else { continue }
            return self.begin(Job(kind: .subscribe(consumer: id), steps: self.subscribeSteps(state)), now: now)
        }
        for id in ids {
            guard var state = self.consumers[id], state.cancelPending, let tag = state.consumerTag else { continue }
            let kind = Job.Kind.cancel(consumer: id, continuation: state.registration.continuation,
                                       replies: state.cancelReplies)
            state.cancelPending = false
            state.cancelReplies = []
            self.consumers[id] = state
            let step = Step(method: .basicCancel(channel: state.channel, consumerTag: tag),
                            operation: .other("cancel the consumer of '\(state.registration.queue)'"))
            return self.begin(Job(kind: kind, steps: [step]), now: now)
        }
        for id in ids {
            guard let state = self.consumers[id], state.cancelled, !state.cancelPending, state.unsettled.isEmpty
            else { continue }
            self.consumers[id] = nil
            let actions = self.retire(state)
            guard state.epoch != 0 else { return actions }
            return actions + self.beginClosing(state.channel, now: now)
        }
        if let channel = self.channelsToClose.popFirst() {
            return self.beginClosing(channel, now: now)
        }
        return self.nextPublish(now: now)
    }

    private mutating func nextPublish(now: ContinuousClock.Instant) -> [Action] {
        guard !self.blocked, !self.unsent.isEmpty else { return [] }
        if !self.publishChannelOpen {
            if let retryAt = self.publishChannelRetryAt, now < retryAt { return [] }
            return self.begin(Job(kind: .openPublishChannel, steps: Self.openPublishChannelSteps), now: now)
        }
        guard self.confirms.outstanding < self.settings.confirmWindow, let request = self.unsent.popFirst() else {
            return []
        }
        if request.deadline <= now { return [.answer(.publish(request, .failure(self.unsentTimeout(request))))] }
        // Registered before sending: if the send fails, part of it may have reached the broker, so
        // the connection loss answers it as "may or may not have been delivered".
        self.confirms.register(request)
        return [.publish(request)]
    }

    private mutating func beginClosing(_ channel: UInt16, now: ContinuousClock.Instant) -> [Action] {
        self.quarantinedChannels.insert(channel)
        let step = Step(method: .channelClose(channel), operation: .other("close a consumer channel"))
        return self.begin(Job(kind: .closeChannel(channel), steps: [step]), now: now)
    }

    static let openControlChannelStep = Step(method: .channelOpen(controlChannel),
                                             operation: .other("open the control channel"))
    static let openPublishChannelSteps = [
        Step(method: .channelOpen(publishChannel), operation: .other("open the publishing channel")),
        Step(method: .confirmSelect, operation: .other("enable publisher confirms")),
    ]

    static func step(for operation: BrokerOperation) -> Step {
        switch operation {
        case .declareExchange(let spec, _): return Step(method: .exchangeDeclare(spec), operation: .declareExchange(spec.name))
        case .declareQueue(let spec, _): return Step(method: .queueDeclare(spec), operation: .declareQueue(spec.name))
        case .bind(let spec, _):
            return Step(method: .queueBind(spec), operation: .bind(queue: spec.queue, exchange: spec.exchange))
        case .unbind(let spec, _):
            return Step(method: .queueUnbind(spec), operation: .unbind(queue: spec.queue, exchange: spec.exchange))
        case .inspectQueue(let name, _): return Step(method: .queueInspect(name), operation: .inspectQueue(name))
        case .deleteQueue(let name, let ifEmpty, _):
            return Step(method: .queueDelete(name, ifEmpty: ifEmpty), operation: .deleteQueue(name))
        case .deleteExchange(let name, _): return Step(method: .exchangeDelete(name), operation: .deleteExchange(name))
        case .purgeQueue(let name, _): return Step(method: .queuePurge(name), operation: .purgeQueue(name))
        }
    }

    private func subscribeSteps(_ state: ConsumerState) -> [Step] {
        let queue = state.registration.queue
        var steps: [Step] = []
        if state.epoch == 0 {
            steps.append(Step(method: .channelOpen(state.channel), operation: .consume(queue)))
            steps.append(Step(method: .basicQos(channel: state.channel, prefetch: state.registration.prefetch),
                              operation: .consume(queue)))
        }
        // A broker-side cancel usually means the queue was deleted: declare it again if this
        // connection declared it, so the consumer comes back instead of failing forever.
        if state.retryAttempt > 0, let spec = self.topology.queue(named: queue) {
            steps.append(Step(method: .queueDeclare(spec), operation: .declareQueue(spec.name)))
            for binding in self.topology.bindings(ofQueue: queue) {
                steps.append(Step(method: .queueBind(binding), operation: .bind(queue: binding.queue, exchange: binding.exchange)))
            }
        }
        steps.append(Step(method: .basicConsume(channel: state.channel, queue: queue), operation: .consume(queue)))
        return steps
    }

    /// Starts `job` (or finishes it at once if it has no steps).
    mutating func begin(_ job: Job, now: ContinuousClock.Instant) -> [Action] {
        self.job = job
        return self.advance(now: now)
    }

    /// Sends the job's current step, or completes the job when none is left.
    private mutating func advance(now: ContinuousClock.Instant) -> [Action] {
        guard var job = self.job else { return [] }
        if let step = job.current {
            // The broker closes the control channel on any failed operation: reopen it first.
            if step.method.channel == Self.controlChannel, !self.controlChannelOpen,
               step.method != Self.openControlChannelStep.method {
                job.steps.insert(Self.openControlChannelStep, at: job.next)
                self.job = job
                return [.rpc(Self.openControlChannelStep.method)]
            }
            return [.rpc(step.method)]
        }
        self.job = nil
        return self.completed(job, now: now)
    }

    // MARK: Outcomes

    /// The outcome of `Action.rpc`.
    mutating func rpcFinished(_ outcome: RPCOutcome, now: ContinuousClock.Instant) -> [Action] {
        guard var job = self.job, let step = job.current else { return [] }
        if case .closeChannel(let channel) = job.kind { return self.channelCloseFinished(channel, outcome, now: now) }
        switch outcome {
        case .ok(let result):
            let actions = self.stepSucceeded(step, result: result, kind: job.kind)
            job.next += 1
            job.lastResult = result
            self.job = job
            return actions + self.advance(now: now)
        case .channelClosed(let code, let text):
            let error = self.brokerError(replyCode: code, replyText: text, operation: step.operation)
            var actions: [Action] = [.sendChannelCloseOk(step.method.channel)]
            actions += self.channelClosed(step.method.channel, error: error, now: now)
            if step.tolerant {
                job.failures += 1
                job.next += 1
                self.job = job
                actions.append(.log(.error, "amqp could not re-declare after reconnecting", [
                    "amqp.entity": "\(step.operation.summary)", "error": "\(error.message)",
                ]))
                return actions + self.advance(now: now)
            }
            self.job = nil
            return actions + self.failed(job, error: error, now: now)
        case .connectionClosed(let code, let text):
            let error = self.brokerError(replyCode: code, replyText: text, operation: step.operation)
            // Forced closes and broker-side trouble may pass: the work is retried after
            // reconnecting. Anything else (NOT_IMPLEMENTED, NOT_ALLOWED, a syntax error) was caused
            // by the operation itself and would close the connection again, every time.
            let jobError = Self.retryableCloseCodes.contains(code)
                ? AMQPError(.connectionLost, error.message, replyCode: error.replyCode, underlying: error) : error
            return [.sendConnectionCloseOk] + self.connectionLost(error, jobError: jobError, now: now)
        case .libraryFailure(let message):
            let error = AMQPError(.connectionLost, "could not \(step.operation.summary): \(message)")
            return self.connectionLost(error, now: now)
        }
    }

    static let retryableCloseCodes: Set<UInt16> = [320, 506, 541]

    private mutating func channelCloseFinished(_ channel: UInt16, _ outcome: RPCOutcome,
                                               now: ContinuousClock.Instant) -> [Action] {
        self.job = nil
        switch outcome {
        case .ok:
            return []
        case .channelClosed:
            // The broker closed it at the same moment: answer, so the number is free on its side too.
            return [.sendChannelCloseOk(channel)]
        case .connectionClosed:
            return [.sendConnectionCloseOk] + self.connectionLost(
                AMQPError(.connectionLost, "the broker closed the connection while a channel was closing"), now: now)
        case .libraryFailure(let message):
            return self.connectionLost(AMQPError(.connectionLost, "could not close a consumer channel: \(message)"),
                                       now: now)
        }
    }

    /// State changes when one step succeeded.
    private mutating func stepSucceeded(_ step: Step, result: RPCResult, kind: Job.Kind) -> [Action] {
        switch step.method {
        case .channelOpen(Self.controlChannel):
            self.controlChannelOpen = true
        case .channelOpen(let channel):
            guard case .subscribe(let id) = kind, self.consumers[id]?.channel == channel else { break }
            self.channelEpoch += 1
            self.consumers[id]?.epoch = self.channelEpoch
        case .confirmSelect:
            // Confirms are reset whenever the publishing channel closes, so none are pending here;
            // were one left, its caller must still hear back instead of waiting for ever.
            let orphaned = self.confirms.reset()
            self.publishChannelOpen = true
            self.publishChannelRetryAt = nil
            let lost = AMQPError(.connectionLost, "the publishing channel reopened before the broker confirmed this "
                                 + "publish; it may or may not have been delivered. Retry it.")
            return orphaned.map { .answer(.publish($0, .failure(lost))) }
        case .basicConsume(let channel, let queue):
            guard case .subscribe(let id) = kind, case .consumerTag(let tag) = result else { break }
            self.consumers[id]?.consumerTag = tag
            self.consumers[id]?.subscribed = true
            self.consumers[id]?.retryAt = nil
            self.consumers[id]?.retryAttempt = 0
            return [.log(.debug, "amqp consumer subscribed", ["amqp.queue": "\(queue)", "amqp.channel": "\(channel)"])]
        case .basicCancel:
            guard case .cancel(let id, _, _) = kind else { break }
            self.consumers[id]?.subscribed = false
        default:
            break
        }
        return []
    }

    /// All steps succeeded.
    private mutating func completed(_ job: Job, now: ContinuousClock.Instant) -> [Action] {
        switch job.kind {
        case .establish(let replaying):
            self.phase = .connected
            // Consumers re-subscribe right away on a fresh connection, whatever backoff they were in.
            for id in self.consumers.keys { self.consumers[id]?.retryAt = nil }
            var actions: [Action] = []
            if replaying {
                let counts = "\(self.topology.exchanges.count) exchanges, \(self.topology.queues.count) queues, "
                    + "\(self.topology.bindings.count) bindings"
                actions.append(.log(.info, "amqp topology re-declared",
                                    ["amqp.topology": "\(counts)", "amqp.failures": "\(job.failures)"]))
            }
            if let initial = self.initialReply {
                self.initialReply = nil
                actions.append(.answer(.void(initial, .success(()))))
            }
            return actions
        case .operation:
            guard let operation = self.pendingOperations.popFirst()?.operation else { return [] }
            return [self.operationSucceeded(operation, result: job.lastResult ?? .done)]
        case .subscribe(let id):
            guard let reply = self.consumers[id]?.pendingReply else { return [] }
            self.consumers[id]?.pendingReply = nil
            self.consumers[id]?.pendingDeadline = nil
            return [.answer(.void(reply, .success(())))]
        case .cancel(_, let continuation, let replies):
            return [.answer(.finish(continuation))] + replies.map { .answer(.void($0, .success(()))) }
        case .closeChannel, .openPublishChannel:
            return []
        }
    }

    /// Records what a successful operation changed and answers its caller with its last step's result.
    private mutating func operationSucceeded(_ operation: BrokerOperation, result: RPCResult) -> Action {
        switch operation {
        case .declareExchange(let spec, _): self.topology.record(spec)
        case .declareQueue(let spec, _): self.topology.record(spec)
        case .bind(let spec, _): self.topology.record(spec)
        case .unbind(let spec, _): self.topology.forget(spec)
        case .deleteQueue(let name, _, _): self.topology.forgetQueue(named: name)
        case .deleteExchange(let name, _): self.topology.forgetExchange(named: name)
        case .inspectQueue, .purgeQueue: break
        }
        return Self.answer(operation, with: .success(result))
    }

    /// A step failed with `error` and the connection is still up (the broker closed a channel),
    /// or the connection was lost (`error.code == .connectionLost` means "retry later").
    mutating func failed(_ job: Job, error: AMQPError, now: ContinuousClock.Instant) -> [Action] {
        switch job.kind {
        case .establish:
            // Replay steps tolerate refusals, so this is a fixed channel the broker refused (or the
            // connection was lost, which `connectionLost` already handled): start over.
            return self.hasConnection ? self.connectionLost(error, now: now) : []
        case .operation:
            guard error.code != .connectionLost, let first = self.pendingOperations.popFirst() else { return [] }
            return [Self.answer(first.operation, with: .failure(error))]
        case .subscribe(let id):
            guard error.code != .connectionLost, var state = self.consumers[id] else { return [] }
            if let reply = state.pendingReply {
                // The first subscription failed: tell the caller instead of retrying forever.
                self.consumers[id] = nil
                state.pendingReply = nil
                return [.answer(.finish(state.registration.continuation)), .answer(.void(reply, .failure(error)))]
            }
            state.scheduleRetry(backoff: self.settings.reconnectBackoff, now: now, random: self.random())
            self.consumers[id] = state
            return [.log(.warning, "amqp re-subscribe failed; will retry", [
                "amqp.queue": "\(state.registration.queue)", "error": "\(error.message)",
            ])]
        case .cancel(_, let continuation, let replies):
            return [.answer(.finish(continuation))] + replies.map { .answer(.void($0, .success(()))) }
        case .openPublishChannel:
            if error.code != .connectionLost { self.publishChannelRetryAt = now + Self.publishChannelRetry }
            return []
        case .closeChannel:
            return []
        }
    }
}
