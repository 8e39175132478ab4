import DequeModule
import Logging

/// Every protocol decision of one AMQP connection, as a value: it takes events (a command posted,
/// a frame received, the outcome of a library call, the passing of time) and returns the actions
/// to perform. It performs no I/O, reads no clock (callers pass `now`) and resumes no
/// continuation: replies travel inside actions and `ConnectionLoop` answers them.
///
/// Library calls are synchronous, so at most one call whose outcome matters is in flight: an
/// action list holds at most one such action (`Action.awaitsOutcome`), always last, and its
/// outcome is the next event (`connected`, `rpcFinished`, `publishFailed`, …). Multi-step work
/// (open a channel, set its prefetch, consume) is a `Job` whose remaining steps the machine holds.
struct ConnectionStateMachine {
    static let controlChannel: UInt16 = 1
    static let publishChannel: UInt16 = 2
    /// Consumers get channels from here up to `channelLimit`, reused once closed.
    static let firstConsumerChannel: UInt16 = 3
    /// The channel_max this client asks for at login; RabbitMQ's default is the same.
    static let channelMax: UInt16 = 2047
    /// How soon to try again to open the publishing channel after the broker refused it.
    static let publishChannelRetry: Duration = .milliseconds(100)

    static let closedError = AMQPError(.closed, "the AMQP connection has been closed by this process; open a new one")

    /// The parts of the configuration that shape decisions.
    struct Settings: Sendable {
        /// Tried in turn: each reconnect goes to the next one.
        var addresses: [AMQPURL]
        var operationTimeout: Duration
        var publishTimeout: Duration
        var confirmWindow: Int
        var reconnectBackoff: Backoff
        var heartbeat: Duration

        init(_ configuration: AMQPConfiguration, addresses: [AMQPURL]? = nil) {
            self.addresses = addresses ?? configuration.urls
            self.operationTimeout = configuration.operationTimeout
            self.publishTimeout = configuration.publishTimeout
            self.confirmWindow = configuration.confirmWindow
            self.reconnectBackoff = configuration.reconnectBackoff
            self.heartbeat = configuration.heartbeat
        }
    }

    enum Phase: Equatable {
        /// `start` not called yet.
        case idle
        /// Opening the socket and logging in (`Action.connect` in flight); no library handle yet.
        case connecting
        /// Logged in; opening the fixed channels and re-declaring the topology.
        case settingUp
        case connected
        /// No connection; the next attempt is due at `retryAt`.
        case disconnected(retryAt: ContinuousClock.Instant)
        /// Closed for good: the connection thread may exit.
        case finished
    }

    struct PendingOperation {
        var operation: BrokerOperation
        var deadline: ContinuousClock.Instant
    }

    struct Closing {
        var deadline: ContinuousClock.Instant
        var replies: [Reply<Void>]
    }

    let settings: Settings
    /// Jitter for backoff delays, a number in 0...1 per call (fixed in tests).
    let random: () -> Double

    var phase: Phase = .idle
    /// The caller of `connect`, until the first connection is set up (or fails).
    var initialReply: Reply<Void>?
    /// Why each address failed during the first connection, in the order tried.
    var initialFailures: [String] = []
    var connectionCount = 0
    var lastError: AMQPError?
    var reconnectAttempt = 0
    /// Index into `settings.addresses` of the broker connected to, or to connect to next.
    var addressIndex = 0
    var blocked = false
    var controlChannelOpen = false
    var publishChannelOpen = false
    var publishChannelRetryAt: ContinuousClock.Instant?
    var channelEpoch: UInt64 = 0
    /// The highest channel number the broker agreed to at login (it may allow fewer than asked).
    var channelLimit = ConnectionStateMachine.channelMax
    /// Consumer channels closed while frames were queued in the library: some of those frames may
    /// belong to them, so they are not handed out again until the queue has been read
    /// (`libraryQueueEmpty`).
    var quarantinedChannels: Set<UInt16> = []
    /// Channels of abandoned consumers, still to be closed.
    var channelsToClose: Deque<UInt16> = []

    var confirms = ConfirmTracker<PublishRequest>()
    var unsent: Deque<PublishRequest> = []
    var pendingOperations: Deque<PendingOperation> = []
    var consumers = ConsumerTable()
    var topology = RecordedTopology()
    var closing: Closing?
    /// The multi-step work whose current step's outcome is awaited.
    var job: Job?

    init(settings: Settings, random: @escaping () -> Double = { Double.random(in: 0...1) }) {
        precondition(!settings.addresses.isEmpty, "a connection needs at least one broker address")
        self.settings = settings
        self.random = random
    }

    var address: AMQPURL { self.settings.addresses[self.addressIndex] }

    /// Whether the library holds a connection handle.
    var hasConnection: Bool { self.phase == .connected || self.phase == .settingUp }
    var isFinished: Bool { self.phase == .finished }

    /// When the next connection attempt is due; nil while connected, connecting or closing.
    var reconnectDeadline: ContinuousClock.Instant? {
        guard case .disconnected(let retryAt) = self.phase, self.closing == nil else { return nil }
        return retryAt
    }

    /// True when `nextWork` would send a publish right away (the loop then polls without waiting).
    var canSendPublish: Bool {
        self.phase == .connected && !self.unsent.isEmpty && self.publishChannelOpen && !self.blocked
            && self.confirms.outstanding < self.settings.confirmWindow
    }

    var status: ConnectionStatus {
        ConnectionStatus(
            isConnected: self.hasConnection,
            connectionCount: self.connectionCount,
            unconfirmedPublishes: self.confirms.outstanding,
            queuedPublishes: self.unsent.count,
            isBlocked: self.blocked,
            activeConsumers: self.consumers.values.filter(\.subscribed).count,
            lastError: self.hasConnection ? nil : self.lastError?.message
        )
    }

    // MARK: Starting

    /// The first connection attempt; `initial` is answered once it is set up or has failed.
    mutating func start(initial: Reply<Void>) -> [Action] {
        guard self.phase == .idle else { return [.answer(.void(initial, .failure(Self.closedError)))] }
        self.initialReply = initial
        self.phase = .connecting
        return [.connect(self.address)]
    }

    // MARK: Commands

    mutating func command(_ command: Command, now: ContinuousClock.Instant) -> [Action] {
        if self.phase == .finished { return self.refusal(of: command, with: Self.closedError) }
        if self.closing != nil {
            switch command {
            case .settle, .status, .cancelConsumer, .abandonConsumer: break
            case .close(_, let reply):
                if let reply { self.closing?.replies.append(reply) }
                return []
            case .publish, .publishBatch, .operation, .consume:
                return self.refusal(of: command, with: Self.closedError)
            }
        }
        switch command {
        case .publish(let request):
            self.unsent.append(request)
            return []
        case .publishBatch(let requests):
            self.unsent.append(contentsOf: requests)
            return []
        case .operation(let operation):
            self.pendingOperations.append(PendingOperation(operation: operation,
                                                           deadline: now + self.settings.operationTimeout))
            return []
        case .settle(let settlement, let tag, let channel, let reply):
            return self.settle(settlement, tag: tag, channel: channel, reply: reply)
        case .status(let reply):
            return [.answer(.status(reply, self.status))]
        case .consume(let registration, let reply):
            guard let channel = self.allocateConsumerChannel() else {
                return [.answer(.finish(registration.continuation)), .answer(.void(reply, .failure(AMQPError(
                    .invalidArgument,
                    "this connection already has \(self.consumers.count) consumers open, one channel each, and "
                    + "channel_max is \(self.channelLimit): cancel consumers you no longer need, or open another "
                    + "connection"))))]
            }
            var state = ConsumerState(registration: registration, channel: channel)
            state.pendingReply = reply
            state.pendingDeadline = now + self.settings.operationTimeout
            self.consumers[registration.id] = state
            return []
        case .cancelConsumer(let id, let reply):
            return self.cancelConsumer(id, reply: reply)
        case .abandonConsumer(let id):
            return self.abandonConsumer(id)
        case .close(let drainTimeout, let reply):
            self.closing = Closing(deadline: now + drainTimeout, replies: reply.map { [$0] } ?? [])
            var actions: [Action] = [.log(.info, "amqp connection closing", [
                "amqp.unconfirmed": "\(self.confirms.outstanding)", "amqp.queued": "\(self.unsent.count)",
            ])]
            for id in self.consumers.keys.sorted() { actions += self.cancelConsumer(id, reply: nil) }
            return actions
        }
    }

    /// The answers for a command that cannot be carried out.
    func refusal(of command: Command, with error: AMQPError) -> [Action] {
        switch command {
        case .publish(let request): return [.answer(.publish(request, .failure(error)))]
        case .publishBatch(let requests): return requests.map { .answer(.publish($0, .failure(error))) }
        case .operation(let operation): return [Self.answer(operation, with: .failure(error))]
        case .consume(let registration, let reply):
            return [.answer(.void(reply, .failure(error))), .answer(.finish(registration.continuation))]
        case .cancelConsumer(_, let reply), .settle(_, _, _, let reply): return [.answer(.void(reply, .failure(error)))]
        case .status(let reply): return [.answer(.status(reply, self.status))]
        case .close(_, let reply): return reply.map { [.answer(.void($0, .success(())))] } ?? []
        case .abandonConsumer: return []
        }
    }

    /// Answers an operation's caller with `result` (the shape of its reply decides which part is used).
    static func answer(_ operation: BrokerOperation, with result: Result<RPCResult, AMQPError>) -> Action {
        switch operation {
        case .declareExchange(_, let reply), .bind(_, let reply), .unbind(_, let reply),
             .deleteExchange(_, let reply):
            return .answer(.void(reply, result.map { _ in () }))
        case .declareQueue(let spec, let reply):
            return .answer(.queueStatus(reply, result.map { $0.queueStatus(defaultName: spec.name) }))
        case .inspectQueue(let name, let reply):
            return .answer(.queueStatus(reply, result.map { $0.queueStatus(defaultName: name) }))
        case .deleteQueue(_, _, let reply), .purgeQueue(_, let reply):
            return .answer(.count(reply, result.map(\.messageCount)))
        }
    }

    // MARK: Consumers and settlements

    /// The lowest consumer channel no consumer holds, so that a long-lived connection touches few
    /// channel numbers (the library keeps a memory pool per number it has seen). Quarantined
    /// channels and channels still to be closed are skipped.
    func allocateConsumerChannel() -> UInt16? {
        guard self.channelLimit >= Self.firstConsumerChannel else { return nil }
        let taken = Set(self.consumers.values.map(\.channel)).union(self.quarantinedChannels)
            .union(self.channelsToClose)
        return (Self.firstConsumerChannel...self.channelLimit).first { !taken.contains($0) }
    }

    /// The library's queue of frames read ahead is empty: quarantined channels are free again.
    mutating func libraryQueueEmpty() {
        self.quarantinedChannels.removeAll()
    }

    /// Stops deliveries to a consumer; its channel stays open until what it received is settled.
    /// With a subscription, basic.cancel is sent by `nextWork` and `reply` answered after it.
    mutating func cancelConsumer(_ id: Int, reply: Reply<Void>?) -> [Action] {
        guard var state = self.consumers[id], !state.cancelled else {
            if let reply {
                // Already cancelled with basic.cancel still to go: answer when it has gone.
                if self.consumers[id]?.cancelPending == true {
                    self.consumers[id]?.cancelReplies.append(reply)
                    return []
                }
                return [.answer(.void(reply, .success(())))]
            }
            return []
        }
        var actions: [Action] = []
        state.cancelled = true
        if let pending = state.pendingReply {
            state.pendingReply = nil
            actions.append(.answer(.void(pending, .failure(Self.closedError))))
        }
        if state.subscribed, state.consumerTag != nil, self.phase == .connected {
            state.cancelPending = true
            if let reply { state.cancelReplies.append(reply) }
        } else {
            state.subscribed = false
            actions.append(.answer(.finish(state.registration.continuation)))
            if let reply { actions.append(.answer(.void(reply, .success(())))) }
        }
        self.consumers[id] = state
        return actions
    }

    /// Forgets a consumer nobody reads any more and has its channel closed, so the broker requeues
    /// every delivery it held (handed out or not); settling one of them later fails harmlessly.
    mutating func abandonConsumer(_ id: Int) -> [Action] {
        guard let state = self.consumers.removeValue(forKey: id) else { return [] }
        var actions = self.retire(state)
        if state.epoch != 0, self.hasConnection {
            self.channelsToClose.append(state.channel)
            actions.append(.log(.debug, "amqp consumer abandoned by its reader; closing its channel", [
                "amqp.queue": "\(state.registration.queue)", "amqp.unsettled": "\(state.unsettled.count)",
            ]))
        }
        return actions
    }

    /// The answers owed to the callers around a consumer that is going away.
    func retire(_ state: ConsumerState, pendingError: AMQPError = Self.closedError) -> [Action] {
        var actions: [Action] = [.answer(.finish(state.registration.continuation))]
        if let pending = state.pendingReply { actions.append(.answer(.void(pending, .failure(pendingError)))) }
        for reply in state.cancelReplies { actions.append(.answer(.void(reply, .success(())))) }
        return actions
    }

    mutating func settle(_ settlement: Settlement, tag: UInt64, channel: ChannelRef, reply: Reply<Void>) -> [Action] {
        guard self.phase == .connected,
              let id = self.consumers.id(onChannel: channel.number),
              self.consumers.update(id, { $0.epoch != 0 && $0.epoch == channel.epoch }) == true else {
            return [.answer(.void(reply, .failure(AMQPError(.deliveryExpired,
                "the channel this message arrived on has closed (connection lost or channel error), so it can no "
                + "longer be acknowledged; the broker redelivers it, so process it idempotently"))))]
        }
        // Recorded before sending: if the send fails the connection is lost, and with it the record.
        switch settlement {
        case .ack(let multiple): _ = self.consumers.update(id) { $0.settled(tag: tag, multiple: multiple) }
        case .reject: _ = self.consumers.update(id) { $0.settled(tag: tag, multiple: false) }
        }
        return [.settle(settlement, channel: channel.number, tag: tag, reply)]
    }

    /// The outcome of `Action.settle` when the library could not send it.
    mutating func settleFailed(_ reply: Reply<Void>, libraryMessage: String, now: ContinuousClock.Instant) -> [Action] {
        let error = AMQPError(.connectionLost, "could not settle a delivery: \(libraryMessage); the broker redelivers it")
        return self.connectionLost(error, now: now) + [.answer(.void(reply, .failure(error)))]
    }

    /// Helper for error texts that name the state of the connection.
    var lastErrorText: String { self.lastError?.message ?? "none" }

    /// Translates a broker's close for an operation against the current address.
    func brokerError(replyCode: UInt16, replyText: String, operation: AMQPOperation) -> AMQPError {
        BrokerErrorTranslator.error(replyCode: replyCode, replyText: replyText, operation: operation,
                                    user: self.address.user, virtualHost: self.address.virtualHost)
    }
}
