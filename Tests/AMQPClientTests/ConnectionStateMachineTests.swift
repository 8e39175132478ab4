@testable import AMQPClient
import Testing

/// The connection's protocol decisions as tables of event → actions, with no socket. Jitter is
/// fixed, so every backoff delay is its ceiling (100 ms, 200 ms, 400 ms, …).
@Suite struct ConnectionStateMachineTests {
    typealias Row = Harness.Row

    // MARK: Connecting

    @Test func firstConnectionOpensTheFixedChannelsThenAnswersConnect() async {
        var harness = Harness()
        let initial = await Probe<Void>.make()
        harness.check([
            Row("start", ["connect broker-a"]) { h in h.run { m, _ in m.start(initial: initial.reply) } },
            Row("logged in", ["channel.open 1"]) { $0.run { $0.connected(negotiatedChannelMax: 0, now: $1) } },
            Row("control channel open", ["channel.open 2"]) { $0.ok() },
            Row("publish channel open", ["confirm.select"]) { $0.ok() },
            Row("confirms on", ["reply ok"]) { $0.ok() },
            Row("nothing to do", []) { $0.work() },
        ])
        #expect(await initial.errorCode == nil)
        #expect(harness.machine.phase == .connected)
        #expect(harness.machine.status.connectionCount == 1)
    }

    @Test func firstConnectionFailureAnswersConnectAndShutsDown() async {
        var harness = Harness()
        let initial = await Probe<Void>.make()
        harness.check([
            Row("start", ["connect broker-a"]) { h in h.run { m, _ in m.start(initial: initial.reply) } },
            Row("refused", ["reply connectionRefused", "shut down"]) {
                $0.run { $0.connectFailed(AMQPError(.connectionRefused, "refused"), now: $1) }
            },
        ])
        #expect(harness.machine.isFinished)
        #expect(await initial.errorCode == .connectionRefused)
    }

    @Test func firstConnectionLostDuringSetupAnswersConnect() async {
        var harness = Harness()
        let initial = await Probe<Void>.make()
        harness.check([
            Row("start", ["connect broker-a"]) { h in h.run { m, _ in m.start(initial: initial.reply) } },
            Row("logged in", ["channel.open 1"]) { $0.run { $0.connected(negotiatedChannelMax: 0, now: $1) } },
            Row("socket error", ["destroy", "reply connectionLost", "shut down"]) {
                $0.outcome(.libraryFailure("a socket error occurred"))
            },
        ])
        #expect(await initial.error?.message == "could not open the control channel: a socket error occurred")
    }

    @Test func reconnectAttemptsBackOffAndResetAfterSuccess() async {
        var harness = Harness()
        _ = await harness.connect()
        let refused = AMQPError(.connectionRefused, "refused")
        harness.check([
            Row("socket error", ["destroy"]) { $0.lose() },
            Row("99 ms later", []) { $0.advance(.milliseconds(99)); return $0.work() },
            Row("100 ms later", ["connect broker-a"]) { $0.advance(.milliseconds(1)); return $0.work() },
            Row("refused", []) { $0.run { $0.connectFailed(refused, now: $1) } },
            Row("199 ms later", []) { $0.advance(.milliseconds(199)); return $0.work() },
            Row("200 ms later", ["connect broker-a"]) { $0.advance(.milliseconds(1)); return $0.work() },
            Row("refused", []) { $0.run { $0.connectFailed(refused, now: $1) } },
            Row("399 ms later", []) { $0.advance(.milliseconds(399)); return $0.work() },
            Row("400 ms later", ["connect broker-a"]) { $0.advance(.milliseconds(1)); return $0.work() },
            Row("logged in", ["channel.open 1"]) { $0.run { $0.connected(negotiatedChannelMax: 0, now: $1) } },
            Row("set up", ["channel.open 2", "confirm.select"]) { $0.ok() + $0.ok() },
            Row("confirms on", []) { $0.ok() },
            Row("lost again", ["destroy"]) { $0.lose() },
            Row("100 ms later: the schedule started over", ["connect broker-a"]) {
                $0.advance(.milliseconds(100)); return $0.work()
            },
        ])
        #expect(harness.machine.status.connectionCount == 2)
        #expect(harness.machine.reconnectAttempt == 1)
    }

    @Test func reconnectRotatesThroughTheAddresses() async {
        var harness = Harness(addresses: ["amqp://broker-a/", "amqp://broker-b/", "amqp://broker-c/"])
        let refused = AMQPError(.connectionRefused, "refused")
        #expect(await harness.connect() == ["connect broker-a", "channel.open 1", "channel.open 2", "confirm.select", "reply ok"])
        harness.check([
            Row("lost", ["destroy"]) { $0.lose() },
            Row("backoff passed", ["connect broker-b"]) { $0.advance(.seconds(1)); return $0.work() },
            Row("refused", []) { $0.run { $0.connectFailed(refused, now: $1) } },
            Row("backoff passed", ["connect broker-c"]) { $0.advance(.seconds(1)); return $0.work() },
            Row("refused", []) { $0.run { $0.connectFailed(refused, now: $1) } },
            Row("backoff passed", ["connect broker-a"]) { $0.advance(.seconds(1)); return $0.work() },
            Row("refused", []) { $0.run { $0.connectFailed(refused, now: $1) } },
            Row("backoff passed", ["connect broker-b"]) { $0.advance(.seconds(2)); return $0.work() },
            Row("connected to b", ["channel.open 1"]) { $0.run { $0.connected(negotiatedChannelMax: 0, now: $1) } },
            Row("set up", ["channel.open 2", "confirm.select"]) { $0.ok() + $0.ok() },
            Row("confirms on", []) { $0.ok() },
            Row("lost", ["destroy"]) { $0.lose() },
            Row("the next address after b", ["connect broker-c"]) { $0.advance(.seconds(1)); return $0.work() },
        ])
    }

    /// A service starting while the first node of its cluster is down connects to the next at
    /// once; only when every address refuses does `connect` fail, naming each one's reason.
    @Test func theFirstConnectionTriesEveryAddressOnceBeforeFailing() async {
        var harness = Harness(addresses: ["amqp://broker-a/", "amqp://broker-b/", "amqp://broker-c/"])
        let refused = AMQPError(.connectionRefused, "refused")
        let initial = await Probe<Void>.make()
        #expect(harness.run { machine, _ in machine.start(initial: initial.reply) } == ["connect broker-a"])
        harness.check([
            Row("a refused: b at once, no backoff", []) { $0.run { $0.connectFailed(refused, now: $1) } },
            Row("b", ["connect broker-b"]) { $0.work() },
            Row("b refused", []) { $0.run { $0.connectFailed(refused, now: $1) } },
            Row("c", ["connect broker-c"]) { $0.work() },
            Row("c refused: connect fails", ["reply connectionRefused", "shut down"]) { $0.run { $0.connectFailed(refused, now: $1) } },
        ])
        let error = await initial.error
        #expect(error?.code == .connectionRefused)
        #expect(error?.message.contains("broker-a:5672: refused") == true)
        #expect(error?.message.contains("broker-c:5672: refused") == true)
    }

    /// A node that accepts the login but drops the connection during setup counts as failed
    /// too: the next address is tried before `connect` gives up.
    @Test func theFirstConnectionBrokenDuringSetupMovesToTheNextAddress() async {
        var harness = Harness(addresses: ["amqp://broker-a/", "amqp://broker-b/"])
        let initial = await Probe<Void>.make()
        _ = harness.run { machine, _ in machine.start(initial: initial.reply) }
        harness.check([
            Row("a logs in", ["channel.open 1"]) { $0.run { $0.connected(negotiatedChannelMax: 0, now: $1) } },
            Row("a drops the connection", ["destroy"]) { $0.lose() },
            Row("b at once", ["connect broker-b"]) { $0.work() },
            Row("b answers", ["channel.open 1"]) { $0.run { $0.connected(negotiatedChannelMax: 0, now: $1) } },
            Row("set up", ["channel.open 2", "confirm.select"]) { $0.ok() + $0.ok() },
            Row("connect succeeds", ["reply ok"]) { $0.ok() },
        ])
        #expect(await initial.errorCode == nil)
    }

    @Test func theFirstConnectionUsesTheFirstAddressThatAnswers() async {
        var harness = Harness(addresses: ["amqp://broker-a/", "amqp://broker-b/"])
        let initial = await Probe<Void>.make()
        _ = harness.run { machine, _ in machine.start(initial: initial.reply) }
        harness.check([
            Row("a refused", []) { $0.run { $0.connectFailed(AMQPError(.connectionRefused, "refused"), now: $1) } },
            Row("b", ["connect broker-b"]) { $0.work() },
            Row("b answers", ["channel.open 1"]) { $0.run { $0.connected(negotiatedChannelMax: 0, now: $1) } },
            Row("set up", ["channel.open 2", "confirm.select"]) { $0.ok() + $0.ok() },
            Row("connect succeeds", ["reply ok"]) { $0.ok() },
        ])
        #expect(await initial.errorCode == nil)
    }

    // MARK: Recovery

    @Test func reconnectRedeclaresTopologyThenResubscribes() async {
        var harness = Harness()
        _ = await harness.connect()
        let exchange = ExchangeSpec(name: "x")
        let queue = QueueSpec(name: "q")
        let binding = BindingSpec(queue: "q", exchange: "x")
        let declared = [await Probe<Void>.make(), await Probe<Void>.make()]
        let queueReply = await Probe<QueueStatus>.make()
        _ = harness.command(.declareExchange(exchange, declared[0].reply))
        _ = harness.command(.declareQueue(queue, queueReply.reply))
        _ = harness.command(.bind(binding, declared[1].reply))
        #expect(harness.workUntilIdle() == [
            "exchange.declare x", "reply ok", "queue.declare q", "reply queue q", "queue.bind q->x", "reply ok",
        ])
        let (consumed, _, _) = await harness.consume("q")
        #expect(harness.workUntilIdle() == ["channel.open 3", "basic.qos 3 10", "basic.consume 3 q", "reply ok"])
        #expect(await consumed.errorCode == nil)

        harness.check([
            Row("lost, then reconnected", [
                "destroy", "connect broker-a", "channel.open 1", "channel.open 2", "confirm.select",
                "exchange.declare x", "queue.declare q", "queue.bind q->x",
            ]) { $0.loseAndReconnect() },
            Row("topology replayed: consumers resume", ["channel.open 3", "basic.qos 3 10", "basic.consume 3 q"]) {
                $0.workUntilIdle()
            },
        ])
        #expect(harness.machine.status.activeConsumers == 1)
    }

    @Test func replaySkipsAnEntityTheBrokerRefuses() async {
        var harness = Harness()
        _ = await harness.connect()
        let queueReply = await Probe<QueueStatus>.make()
        let bound = await Probe<Void>.make()
        _ = harness.command(.declareQueue(QueueSpec(name: "q"), queueReply.reply))
        _ = harness.command(.bind(BindingSpec(queue: "q", exchange: "x"), bound.reply))
        _ = harness.workUntilIdle()
        harness.check([
            Row("lost", ["destroy"]) { $0.lose() },
            Row("reconnect", ["connect broker-a"]) { $0.advance(.seconds(1)); return $0.work() },
            Row("logged in", ["channel.open 1"]) { $0.run { $0.connected(negotiatedChannelMax: 0, now: $1) } },
            Row("set up", ["channel.open 2", "confirm.select", "queue.declare q"]) { $0.ok() + $0.ok() + $0.ok() },
            Row("queue refused: control channel reopened, replay goes on", ["channel.close-ok 1", "channel.open 1"]) {
                $0.outcome(.channelClosed(replyCode: 406, replyText: "PRECONDITION_FAILED - inequivalent arg"))
            },
            Row("control channel open", ["queue.bind q->x"]) { $0.ok() },
            Row("bound", []) { $0.ok() },
        ])
        #expect(harness.machine.phase == .connected)
    }

    @Test func connectionLossFailsUnconfirmedPublishesAndKeepsUnsentOnes() async {
        var harness = Harness(confirmWindow: 2)
        _ = await harness.connect()
        let probes = [await Probe<Void>.make(), await Probe<Void>.make(), await Probe<Void>.make()]
        harness.check([
            Row("three publishes", []) { h in
                h.command(h.publish("e1", probe: probes[0])) + h.command(h.publish("e2", probe: probes[1]))
                    + h.command(h.publish("e3", probe: probes[2]))
            },
            Row("work: the window holds two", ["basic.publish e1", "basic.publish e2"]) { $0.workUntilIdle() },
            Row("socket error", ["destroy", "publish e1 connectionLost", "publish e2 connectionLost"]) { $0.lose() },
        ])
        #expect(await probes[0].error?.isRetryable == true)
        #expect(harness.machine.status.queuedPublishes == 1)
        harness.check([
            Row("reconnected", ["connect broker-a", "channel.open 1", "channel.open 2", "confirm.select"]) {
                $0.reconnect()
            },
            Row("the unsent publish goes out", ["basic.publish e3"]) { $0.workUntilIdle() },
            Row("confirm numbering restarted", ["publish e3 ok"]) {
                $0.run { m, _ in m.confirmed(channel: 2, tag: 1, multiple: false, nack: false) }
            },
        ])
        #expect(await probes[2].errorCode == nil)
    }

    @Test func sendFailureFailsThePublishAsPossiblyDelivered() async {
        var harness = Harness()
        _ = await harness.connect()
        let probe = await Probe<Void>.make()
        harness.check([
            Row("publish", ["basic.publish e"]) { h in _ = h.command(h.publish("e", probe: probe)); return h.work() },
            Row("send failed", ["destroy", "publish e connectionLost"]) {
                $0.run { $0.publishFailed(libraryMessage: "a socket error occurred", now: $1) }
            },
        ])
    }

    @Test func settleWithATagFromAnOldChannelIsRefused() async {
        var harness = Harness()
        _ = await harness.connect()
        _ = await harness.consume("q")
        _ = harness.workUntilIdle()
        let oldAck = await Probe<Void>.make()
        let newAck = await Probe<Void>.make()
        harness.check([
            Row("delivery on channel 3, epoch 1", ["deliver 3/1 7 from q"]) { $0.deliver(channel: 3, tag: 7) },
            Row("lost and back", [
                "destroy", "connect broker-a", "channel.open 1", "channel.open 2", "confirm.select",
            ]) { $0.loseAndReconnect() },
            Row("resubscribed: channel 3, epoch 2", ["channel.open 3", "basic.qos 3 10", "basic.consume 3 q"]) {
                $0.workUntilIdle()
            },
            Row("ack of the old delivery", ["reply deliveryExpired"]) {
                $0.command(.settle(.ack(multiple: false), tag: 7, channel: ChannelRef(number: 3, epoch: 1), oldAck.reply))
            },
            Row("delivery in the new epoch", ["deliver 3/2 1 from q"]) { $0.deliver(channel: 3, tag: 1) },
            Row("its ack goes out", ["basic.ack 3 1"]) {
                $0.command(.settle(.ack(multiple: false), tag: 1, channel: ChannelRef(number: 3, epoch: 2), newAck.reply))
            },
        ])
        harness.settleReplies.forEach { $0.resume() }
        #expect(await oldAck.errorCode == .deliveryExpired)
        #expect(harness.machine.consumers.values.first?.unsettled.isEmpty == true)
    }

    @Test func settleFailureLosesTheConnection() async {
        var harness = Harness()
        _ = await harness.connect()
        _ = await harness.consume("q")
        _ = harness.workUntilIdle()
        _ = harness.deliver(channel: 3, tag: 1)
        let ack = await Probe<Void>.make()
        _ = harness.command(.settle(.reject(requeue: false), tag: 1, channel: ChannelRef(number: 3, epoch: 1), ack.reply))
        let reply = harness.settleReplies.removeFirst()
        harness.check([
            Row("reject could not be sent", ["destroy", "reply connectionLost"]) {
                $0.run { $0.settleFailed(reply, libraryMessage: "a socket error occurred", now: $1) }
            },
        ])
        #expect(await ack.errorCode == .connectionLost)
    }

    @Test func operationsWaitForTheConnectionUntilTheirDeadline() async {
        var harness = Harness(operationTimeout: .seconds(30))
        _ = await harness.connect()
        let declared = await Probe<QueueStatus>.make()
        let refused = AMQPError(.connectionRefused, "refused")
        harness.check([
            Row("lost", ["destroy"]) { $0.lose() },
            Row("declare while disconnected: queued", []) { $0.command(.declareQueue(QueueSpec(name: "q"), declared.reply)) },
            Row("29 s: reconnect fails", ["connect broker-a"]) { $0.advance(.seconds(29)); return $0.work() },
            Row("refused", []) { $0.run { $0.connectFailed(refused, now: $1) } },
            Row("still within the deadline", []) { $0.work() },
            Row("30 s: the next reconnect is due first", ["connect broker-a"]) { $0.advance(.seconds(1)); return $0.work() },
            Row("refused", []) { $0.run { $0.connectFailed(refused, now: $1) } },
            Row("then the declare times out", ["reply timeout"]) { $0.work() },
        ])
        #expect(await declared.error?.message.contains("last error: refused") == true)
    }

    @Test func retryableConnectionCloseKeepsTheOperationForTheNextConnection() async {
        var harness = Harness()
        _ = await harness.connect()
        let declared = await Probe<Void>.make()
        harness.check([
            Row("declare", ["exchange.declare x"]) { $0.command(.declareExchange(ExchangeSpec(name: "x"), declared.reply)) + $0.work() },
            Row("forced close (320)", ["connection.close-ok", "destroy"]) {
                $0.outcome(.connectionClosed(replyCode: 320, replyText: "CONNECTION_FORCED - broker shutdown"))
            },
            Row("reconnected", ["connect broker-a", "channel.open 1", "channel.open 2", "confirm.select"]) { $0.reconnect() },
            Row("the declare runs again", ["exchange.declare x", "reply ok"]) { $0.workUntilIdle() },
        ])
    }

    @Test(arguments: [(UInt16(540), "protocolError"), (UInt16(530), "accessRefused"), (UInt16(503), "protocolError")])
    func nonRetryableConnectionCloseFailsTheOperation(code: UInt16, expected: String) async {
        var harness = Harness()
        _ = await harness.connect()
        let declared = await Probe<Void>.make()
        harness.check([
            Row("declare", ["exchange.declare x"]) { $0.command(.declareExchange(ExchangeSpec(name: "x"), declared.reply)) + $0.work() },
            Row("connection closed with \(code)", ["connection.close-ok", "destroy", "reply \(expected)"]) {
                $0.outcome(.connectionClosed(replyCode: code, replyText: "NOT_IMPLEMENTED - no"))
            },
            Row("reconnected", ["connect broker-a", "channel.open 1", "channel.open 2", "confirm.select"]) { $0.reconnect() },
            Row("the declare is not retried", []) { $0.workUntilIdle() },
        ])
    }

    // MARK: Consumers and channels

    @Test func channelsAreReusedLowestFirstOnceTheirFramesAreRead() async {
        var harness = Harness()
        _ = await harness.connect()
        let (_, _, first) = await harness.consume("q1")
        _ = await harness.consume("q2")
        #expect(harness.workUntilIdle() == [
            "channel.open 3", "basic.qos 3 10", "basic.consume 3 q1", "reply ok",
            "channel.open 4", "basic.qos 4 10", "basic.consume 4 q2", "reply ok",
        ])
        let cancelled = await Probe<Void>.make()
        harness.check([
            Row("cancel the first: basic.cancel waits for the next pass", []) {
                $0.command(.cancelConsumer(id: first, cancelled.reply))
            },
            Row("work", ["basic.cancel 3 ctag-3"]) { $0.work() },
            Row("cancel-ok", ["finish stream", "reply ok"]) { $0.ok() },
            Row("nothing unsettled: close its channel", ["finish stream", "channel.close 3"]) { $0.work() },
            Row("closed with frames still queued", []) { $0.ok() },
        ])
        _ = await harness.consume("q3")
        #expect(harness.workUntilIdle() == ["channel.open 5", "basic.qos 5 10", "basic.consume 5 q3", "reply ok"])
        harness.machine.libraryQueueEmpty()
        _ = await harness.consume("q4")
        #expect(harness.workUntilIdle() == ["channel.open 3", "basic.qos 3 10", "basic.consume 3 q4", "reply ok"])
    }

    @Test func consumersBeyondTheNegotiatedChannelMaxAreRefused() async {
        var harness = Harness()
        _ = await harness.connect(channelMax: 4)
        _ = await harness.consume("q1")
        _ = await harness.consume("q2")
        let (third, _, _) = await harness.consume("q3")
        #expect(await third.errorCode == .invalidArgument)
        #expect(harness.workUntilIdle().filter { $0.hasPrefix("channel.open") } == ["channel.open 3", "channel.open 4"])
    }

    @Test func cancelledConsumerClosesItsChannelOnceDeliveriesAreSettled() async {
        var harness = Harness()
        _ = await harness.connect()
        let (_, _, id) = await harness.consume("q")
        _ = harness.workUntilIdle()
        let cancelled = await Probe<Void>.make()
        let acked = await Probe<Void>.make()
        harness.check([
            Row("delivery", ["deliver 3/1 1 from q"]) { $0.deliver(channel: 3, tag: 1) },
            Row("cancel", ["basic.cancel 3 ctag-3"]) { $0.command(.cancelConsumer(id: id, cancelled.reply)) + $0.work() },
            Row("cancel-ok", ["finish stream", "reply ok"]) { $0.ok() },
            Row("one delivery unsettled: the channel stays open", []) { $0.work() },
            Row("ack", ["basic.ack 3 1"]) {
                $0.command(.settle(.ack(multiple: false), tag: 1, channel: ChannelRef(number: 3, epoch: 1), acked.reply))
            },
            Row("settled: close", ["finish stream", "channel.close 3"]) { $0.work() },
            Row("closed", []) { $0.ok() },
        ])
        harness.settleReplies.forEach { $0.resume() }
        #expect(harness.machine.consumers.isEmpty)
    }

    @Test func abandonedConsumerClosesItsChannelAtOnce() async {
        var harness = Harness()
        _ = await harness.consumeOnConnected("q")
        let late = await Probe<Void>.make()
        harness.check([
            Row("delivery", ["deliver 3/1 1 from q"]) { $0.deliver(channel: 3, tag: 1) },
            Row("reader gone", ["finish stream"]) { $0.command(.abandonConsumer(id: 1)) },
            Row("work", ["channel.close 3"]) { $0.work() },
            Row("the broker closed it at the same moment", ["channel.close-ok 3"]) {
                $0.outcome(.channelClosed(replyCode: 200, replyText: "OK"))
            },
            Row("late ack", ["reply deliveryExpired"]) {
                $0.command(.settle(.ack(multiple: false), tag: 1, channel: ChannelRef(number: 3, epoch: 1), late.reply))
            },
        ])
    }

    @Test func deliveryToAnEndedStreamGoesBack() async {
        var harness = Harness()
        _ = await harness.consumeOnConnected("q")
        harness.check([
            Row("delivery", ["deliver 3/1 4 from q"]) { $0.deliver(channel: 3, tag: 4) },
            Row("stream ended", ["requeue 3 4"]) { $0.run { m, _ in m.deliveryRefused(ChannelRef(number: 3, epoch: 1), tag: 4) } },
            Row("delivery for a channel with no consumer", []) { $0.deliver(channel: 9, tag: 1) },
        ])
        #expect(harness.machine.consumers[1]?.unsettled.isEmpty == true)
    }

    @Test func firstSubscriptionFailureAnswersConsume() async {
        var harness = Harness()
        _ = await harness.connect()
        let (probe, _, _) = await harness.consume("nope")
        harness.check([
            Row("work", ["channel.open 3"]) { $0.work() },
            Row("open", ["basic.qos 3 10"]) { $0.ok() },
            Row("qos", ["basic.consume 3 nope"]) { $0.ok() },
            Row("no such queue", ["channel.close-ok 3", "finish stream", "reply notFound"]) {
                $0.outcome(.channelClosed(replyCode: 404, replyText: "NOT_FOUND - no queue 'nope' in vhost '/'"))
            },
        ])
        #expect(await probe.errorCode == .notFound)
        #expect(harness.machine.consumers.isEmpty)
    }

    @Test func brokerCancelResubscribesAfterRedeclaringTheQueue() async {
        var harness = Harness()
        _ = await harness.connect()
        let queueReply = await Probe<QueueStatus>.make()
        let bound = await Probe<Void>.make()
        _ = harness.command(.declareQueue(QueueSpec(name: "q"), queueReply.reply))
        _ = harness.command(.bind(BindingSpec(queue: "q", exchange: "x"), bound.reply))
        _ = harness.workUntilIdle()
        _ = await harness.consume("q")
        _ = harness.workUntilIdle()
        harness.check([
            Row("queue deleted: basic.cancel", []) {
                $0.run { $0.consumerCancelledByBroker(channel: 3, consumerTag: "ctag-3", now: $1) }
            },
            Row("before the retry delay", []) { $0.work() },
            Row("retry: declare, bind, consume on the open channel",
                ["queue.declare q", "queue.bind q->x", "basic.consume 3 q"]) {
                $0.advance(.milliseconds(100)); return $0.workUntilIdle()
            },
        ])
    }

    @Test func brokerClosedConsumerChannelReopensIt() async {
        var harness = Harness()
        _ = await harness.consumeOnConnected("q")
        harness.check([
            Row("consumer timeout", ["channel.close-ok 3"]) {
                $0.run { $0.channelClosedByBroker(channel: 3, replyCode: 406, replyText: "PRECONDITION_FAILED - timeout", now: $1) }
            },
            Row("after the retry delay", ["channel.open 3", "basic.qos 3 10", "basic.consume 3 q"]) {
                $0.advance(.milliseconds(100)); return $0.workUntilIdle()
            },
        ])
        #expect(harness.machine.consumers[1]?.epoch == 2)
    }

    // MARK: Publishing

    @Test func publishToAMissingExchangeFailsAndTheChannelReopens() async {
        var harness = Harness()
        _ = await harness.connect()
        let missing = await Probe<Void>.make()
        let next = await Probe<Void>.make()
        harness.check([
            Row("publish", ["basic.publish missing"]) { h in _ = h.command(h.publish("missing", probe: missing)); return h.work() },
            Row("channel closed: no exchange", ["channel.close-ok 2", "publish missing notFound"]) {
                $0.run { $0.channelClosedByBroker(channel: 2, replyCode: 404,
                                                   replyText: "NOT_FOUND - no exchange 'missing' in vhost '/'", now: $1) }
            },
            Row("next publish reopens the channel", ["channel.open 2", "confirm.select", "basic.publish e"]) { h in
                _ = h.command(h.publish("e", probe: next))
                return h.workUntilIdle()
            },
        ])
        #expect(await missing.errorCode == .notFound)
    }

    @Test func confirmsAcksNacksAndReturns() async {
        var harness = Harness()
        _ = await harness.connect()
        let probes = [await Probe<Void>.make(), await Probe<Void>.make(), await Probe<Void>.make()]
        for (index, probe) in probes.enumerated() {
            _ = harness.command(harness.publish("e\(index)", probe: probe, messageID: "m\(index)"))
        }
        _ = harness.workUntilIdle()
        let info = ReturnInfo(replyCode: 312, replyText: "NO_ROUTE", exchange: "e1", routingKey: "")
        harness.check([
            Row("nack of the first", ["publish e0 nacked"]) { $0.run { m, _ in m.confirmed(channel: 2, tag: 1, multiple: false, nack: true) } },
            Row("return for the second", []) { $0.run { m, _ in m.returned(channel: 2, info, messageID: "m1") } },
            Row("ack of all", ["publish e1 unroutable", "publish e2 ok"]) {
                $0.run { m, _ in m.confirmed(channel: 2, tag: 3, multiple: true, nack: false) }
            },
            Row("ack on another channel is ignored", []) { $0.run { m, _ in m.confirmed(channel: 3, tag: 1, multiple: true, nack: false) } },
        ])
    }

    @Test func blockedConnectionHoldsPublishesUntilUnblocked() async {
        var harness = Harness()
        _ = await harness.connect()
        let probe = await Probe<Void>.make()
        harness.check([
            Row("blocked", []) { $0.run { m, _ in m.blocked(reason: "low on memory") } },
            Row("publish waits", []) { h in h.command(h.publish("e", probe: probe)) + h.work() },
            Row("unblocked", []) { $0.run { m, _ in m.unblocked() } },
            Row("publish goes out", ["basic.publish e"]) { $0.work() },
        ])
        #expect(!harness.machine.canSendPublish)
    }

    @Test func unsentPublishTimesOutSayingWhy() async {
        var harness = Harness()
        _ = await harness.connect()
        let probe = await Probe<Void>.make()
        harness.check([
            Row("blocked", []) { $0.run { m, _ in m.blocked(reason: "disk alarm") } },
            Row("publish with a 1 s deadline", []) { h in h.command(h.publish("e", probe: probe, deadline: .seconds(1))) },
            Row("1 s later", ["publish e timeout"]) { $0.advance(.seconds(1)); return $0.work() },
        ])
        #expect(await probe.error?.message.contains("blocking publishers") == true)
    }

    // MARK: Closing

    @Test func gracefulCloseWaitsForConfirmsAndSettlements() async {
        var harness = Harness()
        _ = await harness.consumeOnConnected("q")
        let published = await Probe<Void>.make()
        let closed = await Probe<Void>.make()
        let acked = await Probe<Void>.make()
        let late = await Probe<Void>.make()
        harness.check([
            Row("delivery", ["deliver 3/1 1 from q"]) { $0.deliver(channel: 3, tag: 1) },
            Row("publish", ["basic.publish e"]) { h in _ = h.command(h.publish("e", probe: published)); return h.work() },
            Row("close", []) { $0.command(.close(drainTimeout: .seconds(5), closed.reply)) },
            Row("consumers are cancelled", ["basic.cancel 3 ctag-3"]) { $0.work() },
            Row("cancel-ok", ["finish stream"]) { $0.ok() },
            Row("still draining", []) { $0.work() },
            Row("new publishes are refused", ["publish late closed"]) { h in h.command(h.publish("late", probe: late)) },
            Row("confirm", ["publish e ok"]) { $0.run { m, _ in m.confirmed(channel: 2, tag: 1, multiple: false, nack: false) } },
            Row("ack", ["basic.ack 3 1"]) {
                $0.command(.settle(.ack(multiple: false), tag: 1, channel: ChannelRef(number: 3, epoch: 1), acked.reply))
            },
            Row("drained consumer", ["finish stream", "channel.close 3"]) { $0.work() },
            Row("closed", []) { $0.ok() },
            Row("everything drained", ["connection.close", "shut down", "reply ok"]) { $0.work() },
        ])
        harness.settleReplies.forEach { $0.resume() }
        #expect(harness.machine.isFinished)
        #expect(await closed.errorCode == nil)
    }

    @Test func gracefulCloseGivesUpAtTheDrainDeadline() async {
        var harness = Harness()
        _ = await harness.connect()
        let published = await Probe<Void>.make()
        let queued = await Probe<Void>.make()
        let closed = await Probe<Void>.make()
        let second = await Probe<Void>.make()
        harness.check([
            Row("publish", ["basic.publish e"]) { h in _ = h.command(h.publish("e", probe: published)); return h.work() },
            Row("blocked, and one more publish", []) { h in
                h.run { m, _ in m.blocked(reason: "memory") } + h.command(h.publish("f", probe: queued))
            },
            Row("close", []) { $0.command(.close(drainTimeout: .seconds(5), closed.reply)) },
            Row("close again", []) { $0.command(.close(drainTimeout: .seconds(5), second.reply)) },
            Row("before the deadline", []) { $0.advance(.milliseconds(4_999)); return $0.work() },
            Row("at the deadline", [
                "publish e closed", "publish f closed", "connection.close", "shut down", "reply ok", "reply ok",
            ]) { $0.advance(.milliseconds(1)); return $0.work() },
        ])
    }

    @Test func closeWhileDisconnectedFinishesAtOnce() async {
        var harness = Harness()
        _ = await harness.connect()
        let closed = await Probe<Void>.make()
        harness.check([
            Row("lost", ["destroy"]) { $0.lose() },
            Row("close", []) { $0.command(.close(drainTimeout: .seconds(5), closed.reply)) },
            Row("no reconnect: finish", ["shut down", "reply ok"]) { $0.advance(.seconds(1)); return $0.work() },
        ])
    }

    @Test func missedHeartbeatLosesTheConnectionAndSaysSo() async {
        var harness = Harness()
        _ = await harness.connect()
        harness.check([
            Row("heartbeat timeout", ["destroy"]) {
                $0.run { $0.readFailed(heartbeatMissed: true, libraryMessage: "heartbeat timeout", now: $1) }
            },
        ])
        #expect(harness.machine.lastError?.message == "no heartbeat from the broker for 20.0 seconds")
    }

    @Test func brokerConnectionCloseIsAnsweredAndRecovered() async {
        var harness = Harness()
        _ = await harness.consumeOnConnected("q")
        harness.check([
            Row("delivery", ["deliver 3/1 1 from q"]) { $0.deliver(channel: 3, tag: 1) },
            Row("connection.close 320", ["connection.close-ok", "destroy"]) {
                $0.run { $0.connectionClosedByBroker(replyCode: 320, replyText: "CONNECTION_FORCED - shutdown", now: $1) }
            },
            Row("reconnected and resubscribed", [
                "connect broker-a", "channel.open 1", "channel.open 2", "confirm.select",
                "channel.open 3", "basic.qos 3 10", "basic.consume 3 q",
            ]) { $0.reconnect() + $0.workUntilIdle() },
        ])
        #expect(harness.machine.lastError == nil)
        #expect(harness.machine.consumers[1]?.unsettled.isEmpty == true)
    }

    @Test func cancelWhileDisconnectedAnswersAtOnceAndDropsTheConsumer() async {
        var harness = Harness()
        let stream = await harness.consumeOnConnected("q")
        let cancelled = await Probe<Void>.make()
        harness.check([
            Row("lost", ["destroy"]) { $0.lose() },
            Row("cancel", ["finish stream", "reply ok"]) { $0.command(.cancelConsumer(id: 1, cancelled.reply)) },
            Row("reconnected: nothing to resubscribe", [
                "connect broker-a", "channel.open 1", "channel.open 2", "confirm.select", "finish stream",
            ]) { $0.reconnect() + $0.workUntilIdle() },
        ])
        var iterator = stream.makeAsyncIterator()
        #expect(await iterator.next() == nil)
        #expect(harness.machine.consumers.isEmpty)
    }

    @Test func commandsAfterTheConnectionFinishedAreRefused() async {
        var harness = Harness()
        _ = await harness.connect()
        let closed = await Probe<Void>.make()
        let declared = await Probe<Void>.make()
        let status = await Probe<ConnectionStatus>.make()
        harness.check([
            Row("close with nothing in flight", ["connection.close", "shut down", "reply ok"]) {
                $0.command(.close(drainTimeout: .seconds(5), closed.reply)) + $0.work()
            },
            Row("declare", ["reply closed"]) { $0.command(.declareExchange(ExchangeSpec(name: "x"), declared.reply)) },
            Row("status", ["reply status"]) { $0.command(.status(status.reply)) },
        ])
        #expect(await declared.errorCode == .closed)
        #expect(try! await status.task.value.isConnected == false)
    }

    // MARK: Status

    @Test func statusReportsTheLastErrorWhileDisconnected() async {
        var harness = Harness()
        _ = await harness.connect()
        _ = harness.lose()
        #expect(harness.machine.status.isConnected == false)
        #expect(harness.machine.status.lastError == "a socket error occurred")
        _ = harness.reconnect()
        #expect(harness.machine.status.isConnected)
        #expect(harness.machine.status.lastError == nil)
    }
}

extension Harness {
    /// A delivery of an empty message on `channel`.
    mutating func deliver(channel: UInt16, tag: UInt64) -> [String] {
        self.run { m, _ in
            m.delivered(channel: channel, tag: tag, redelivered: false, exchange: "x", routingKey: "",
                        properties: AMQPProperties(), body: [])
        }
    }

    /// Connects and subscribes one consumer (id 1) to `queue` on channel 3.
    mutating func consumeOnConnected(_ queue: String) async -> DeliveryStream {
        _ = await self.connect()
        let (_, stream, _) = await self.consume(queue)
        _ = self.workUntilIdle()
        return stream
    }
}
