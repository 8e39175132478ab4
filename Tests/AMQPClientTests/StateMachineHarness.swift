@testable import AMQPClient
import Testing

typealias Machine = ConnectionStateMachine

/// A real continuation and the task awaiting it, so a test can see how the machine answered it.
struct Probe<Value: Sendable>: Sendable {
    let reply: Reply<Value>
    let task: Task<Value, any Error>

    static func make() async -> Probe<Value> {
        let (stream, continuation) = AsyncStream.makeStream(of: Reply<Value>.self)
        let task = Task { try await withCheckedThrowingContinuation { continuation.yield($0) } }
        var iterator = stream.makeAsyncIterator()
        return Probe(reply: await iterator.next()!, task: task)
    }

    /// The error code it was answered with, or nil if it succeeded.
    var errorCode: AMQPError.Code? {
        get async {
            switch await self.task.result {
            case .success: return nil
            case .failure(let error): return (error as? AMQPError)?.code ?? .protocolError
            }
        }
    }

    var error: AMQPError? {
        get async {
            if case .failure(let error) = await self.task.result { return error as? AMQPError }
            return nil
        }
    }
}

/// Drives a `ConnectionStateMachine` with a fake clock and fixed jitter (delays are the backoff
/// ceiling), gives every answer it returns and describes its actions as short strings.
struct Harness {
    var machine: Machine
    var now = ContinuousClock.now
    /// Replies of `Action.settle`, answered by the test (success) or through `settleFailed`.
    var settleReplies: [Reply<Void>] = []
    var nextConsumerID = 1

    init(addresses: [String] = ["amqp://guest:guest@broker-a/"], confirmWindow: Int = 512,
         operationTimeout: Duration = .seconds(30), publishTimeout: Duration = .seconds(30)) {
        var configuration = try! AMQPConfiguration(url: addresses[0])
        configuration.confirmWindow = confirmWindow
        configuration.operationTimeout = operationTimeout
        configuration.publishTimeout = publishTimeout
        let urls = addresses.map { try! AMQPURL($0) }
        self.machine = Machine(settings: Machine.Settings(configuration, addresses: urls), random: { 1 })
    }

    mutating func advance(_ duration: Duration) { self.now = self.now + duration }

    /// Applies one event; returns its actions, described (log lines left out).
    @discardableResult
    mutating func run(_ event: (inout Machine, ContinuousClock.Instant) -> [Machine.Action]) -> [String] {
        let actions = event(&self.machine, self.now)
        return self.describe(actions)
    }

    mutating func command(_ command: Command) -> [String] { self.run { $0.command(command, now: $1) } }
    mutating func work() -> [String] { self.run { $0.nextWork(now: $1) } }
    mutating func ok(_ result: Machine.RPCResult = .done) -> [String] { self.run { $0.rpcFinished(.ok(result), now: $1) } }
    mutating func outcome(_ outcome: Machine.RPCOutcome) -> [String] { self.run { $0.rpcFinished(outcome, now: $1) } }

    /// Calls `nextWork` until it has nothing left, answering every method round trip with success
    /// (see `answer`); returns everything that happened.
    mutating func workUntilIdle() -> [String] {
        var all: [String] = []
        var step = self.work()
        while !step.isEmpty {
            all += step
            if let last = step.last, Self.isRPC(last) { step = self.answer(last) } else { step = [] }
            if step.isEmpty { step = self.work() }
        }
        return all
    }

    /// Answers the round trip `description` with success: a consume gets tag "ctag-<channel>", a
    /// queue declare reports an empty queue.
    mutating func answer(_ description: String) -> [String] {
        if description.hasPrefix("basic.consume ") {
            return self.ok(.consumerTag("ctag-\(description.split(separator: " ")[1])"))
        }
        if description.hasPrefix("queue.declare ") {
            return self.ok(.queue(name: String(description.dropFirst("queue.declare ".count)), messageCount: 0, consumerCount: 0))
        }
        return self.ok()
    }

    static func isRPC(_ description: String) -> Bool {
        ["channel.", "confirm.", "basic.qos", "basic.consume", "basic.cancel", "exchange.", "queue."]
            .contains { description.hasPrefix($0) } && !description.hasPrefix("channel.close-ok")
    }

    /// Answers round trips with success until the job `step` started has finished.
    mutating func finishJob(after step: [String]) -> [String] {
        var log: [String] = []
        var last = step.last
        while let current = last, Self.isRPC(current) {
            let next = self.answer(current)
            log += next
            last = next.last
        }
        return log
    }

    /// Connects for the first time (all steps succeed); returns the actions.
    mutating func connect(channelMax: Int = 0) async -> [String] {
        let initial = await Probe<Void>.make()
        var log = self.run { machine, _ in machine.start(initial: initial.reply) }
        log += self.run { $0.connected(negotiatedChannelMax: channelMax, now: $1) }
        log += self.ok()
        log += self.ok()
        log += self.ok()
        return log
    }

    /// Loses the connection (a socket error) and reconnects once the backoff has passed, with
    /// every setup step succeeding.
    mutating func loseAndReconnect() -> [String] {
        self.lose() + self.reconnect()
    }

    mutating func lose() -> [String] {
        self.run { $0.readFailed(heartbeatMissed: false, libraryMessage: "a socket error occurred", now: $1) }
    }

    /// Waits out the backoff and connects, with every setup step succeeding.
    mutating func reconnect() -> [String] {
        self.advance(.seconds(1))
        let connect = self.work()
        let setup = self.run { $0.connected(negotiatedChannelMax: 0, now: $1) }
        return connect + setup + self.finishJob(after: setup)
    }

    /// One row of a table: an event, by name, and the actions it must produce.
    struct Row {
        var event: String
        var apply: (inout Harness) -> [String]
        var expected: [String]

        init(_ event: String, _ expected: [String], _ apply: @escaping (inout Harness) -> [String]) {
            self.event = event
            self.apply = apply
            self.expected = expected
        }
    }

    /// Applies the rows in order, checking each one's actions.
    mutating func check(_ rows: [Row], sourceLocation: SourceLocation = #_sourceLocation) {
        for row in rows {
            let actions = row.apply(&self)
            #expect(actions == row.expected, "after \(row.event)", sourceLocation: sourceLocation)
        }
    }

    /// Posts a consume command and subscribes it; returns the probe of `consume` and the stream.
    mutating func consume(_ queue: String, prefetch: UInt16 = 10) async -> (Probe<Void>, DeliveryStream, Int) {
        let probe = await Probe<Void>.make()
        let (stream, continuation) = DeliveryStream.makeStream()
        let id = self.nextConsumerID
        self.nextConsumerID += 1
        let registration = ConsumerRegistration(id: id, queue: queue, prefetch: prefetch, continuation: continuation)
        _ = self.command(.consume(registration, probe.reply))
        return (probe, stream, id)
    }

    func publish(_ exchange: String, probe: Probe<Void>, deadline: Duration = .seconds(30), messageID: String? = nil) -> Command {
        .publish(PublishRequest(exchange: exchange, routingKey: "", mandatory: true,
                                message: OutgoingMessage(body: [1], messageID: messageID),
                                deadline: self.now + deadline, completion: .single(probe.reply)))
    }

    mutating func describe(_ actions: [Machine.Action]) -> [String] {
        // The contract with the executor: at most one action awaiting an outcome, and it is last.
        let awaiting = actions.indices.filter { actions[$0].awaitsOutcome }
        #expect(awaiting.count <= 1 && (awaiting.first.map { $0 == actions.count - 1 } ?? true),
                "an action awaiting its outcome must be alone and last: \(actions)")
        var described: [String] = []
        for action in actions {
            switch action {
            case .answer(let answer):
                described.append(Self.describe(answer))
                answer.give()
            case .log: continue
            case .shutDown: described.append("shut down")
            case .sendChannelCloseOk(let channel): described.append("channel.close-ok \(channel)")
            case .sendConnectionCloseOk: described.append("connection.close-ok")
            case .destroyConnection: described.append("destroy")
            case .closeConnection: described.append("connection.close")
            case .requeue(let channel, let tag): described.append("requeue \(channel) \(tag)")
            case .connect(let url): described.append("connect \(url.host)")
            case .rpc(let method): described.append(Self.describe(method))
            case .publish(let request): described.append("basic.publish \(request.exchange)")
            case .settle(let settlement, let channel, let tag, let reply):
                self.settleReplies.append(reply)
                switch settlement {
                case .ack(let multiple): described.append("basic.ack \(channel) \(tag)\(multiple ? " multiple" : "")")
                case .reject(let requeue): described.append("basic.reject \(channel) \(tag)\(requeue ? " requeue" : "")")
                }
            case .deliver(let content, let channel, _):
                described.append("deliver \(channel.number)/\(channel.epoch) \(content.tag) from \(content.queue)")
            }
        }
        return described
    }

    static func describe(_ answer: Machine.Answer) -> String {
        switch answer {
        case .void(_, .success): return "reply ok"
        case .void(_, .failure(let error)): return "reply \(error.code)"
        case .queueStatus(_, .success(let status)): return "reply queue \(status.name)"
        case .queueStatus(_, .failure(let error)): return "reply \(error.code)"
        case .count(_, .success(let count)): return "reply \(count)"
        case .count(_, .failure(let error)): return "reply \(error.code)"
        case .status: return "reply status"
        case .publish(let request, .success): return "publish \(request.exchange) ok"
        case .publish(let request, .failure(let error)): return "publish \(request.exchange) \(error.code)"
        case .finish: return "finish stream"
        }
    }

    static func describe(_ method: Machine.BrokerMethod) -> String {
        switch method {
        case .channelOpen(let channel): return "channel.open \(channel)"
        case .channelClose(let channel): return "channel.close \(channel)"
        case .confirmSelect: return "confirm.select"
        case .basicQos(let channel, let prefetch): return "basic.qos \(channel) \(prefetch)"
        case .basicConsume(let channel, let queue): return "basic.consume \(channel) \(queue)"
        case .basicCancel(let channel, let tag): return "basic.cancel \(channel) \(tag)"
        case .exchangeDeclare(let spec): return "exchange.declare \(spec.name)"
        case .exchangeDelete(let name): return "exchange.delete \(name)"
        case .queueDeclare(let spec): return "queue.declare \(spec.name)"
        case .queueInspect(let name): return "queue.inspect \(name)"
        case .queueBind(let spec): return "queue.bind \(spec.queue)->\(spec.exchange)"
        case .queueUnbind(let spec): return "queue.unbind \(spec.queue)->\(spec.exchange)"
        case .queueDelete(let name, _): return "queue.delete \(name)"
        case .queuePurge(let name): return "queue.purge \(name)"
        }
    }
}
