import CRabbitMQ
import DequeModule
import Foundation
import Logging

/// The only code that calls librabbitmq for one connection. It runs on a thread of its own
/// (the library blocks and is not thread-safe): it polls the socket and the mailbox, turns what
/// the library reports into events for `ConnectionStateMachine`, and performs the actions the
/// machine returns. Every protocol decision is the machine's. Tasks talk to it only through the
/// `Mailbox`.
final class ConnectionLoop {
    static let pollInterval: Int32 = 100
    static var closedError: AMQPError { ConnectionStateMachine.closedError }

    let configuration: AMQPConfiguration
    let mailbox: Mailbox
    let watchdog: Watchdog
    let settler: MailboxSettler
    let logger: Logger
    let arena = CArena()

    var machine: ConnectionStateMachine
    var connection: amqp_connection_state_t?
    var finished = false

    init(configuration: AMQPConfiguration, mailbox: Mailbox, logger: Logger) {
        self.configuration = configuration
        self.mailbox = mailbox
        self.settler = MailboxSettler(mailbox: mailbox)
        self.machine = ConnectionStateMachine(settings: ConnectionStateMachine.Settings(configuration))
        var logger = logger
        logger[metadataKey: "amqp.broker"] = "\(configuration.urls.map { "\($0.host):\($0.port)" }.joined(separator: ","))"
        logger[metadataKey: "amqp.vhost"] = "\(configuration.url.virtualHost)"
        logger[metadataKey: "amqp.connection_name"] = "\(configuration.connectionName)"
        self.logger = logger
        self.watchdog = Watchdog(logger: logger)
    }

    /// Connects once (reporting the outcome to `initial`), then serves commands until closed.
    func run(initial: Reply<Void>) {
        self.perform(self.machine.start(initial: initial))
        while !self.finished {
            // Method replies of synchronous calls (declares, queue inspections) are decoded into
            // per-channel pools that only this releases; without it every GetSyncStatus grows memory.
            if let connection = self.connection { amqp_maybe_release_buffers(connection) }
            if self.connection.map({ amqp_frames_enqueued($0) == 0 }) ?? true { self.machine.libraryQueueEmpty() }
            for command in self.mailbox.takeAll() { self.perform(self.machine.command(command, now: .now)) }
            while !self.finished {
                let actions = self.machine.nextWork(now: .now)
                if actions.isEmpty { break }
                self.perform(actions)
            }
            if self.finished { break }
            self.waitAndRead()
        }
    }

    /// Polls the socket and the wake-up eventfd (without blocking while there is work to do),
    /// then reads whatever frames arrived. Reading only when poll reports data saves two
    /// syscalls per pass on the busy publishing path.
    private func waitAndRead() {
        if let connection = self.connection,
           amqp_frames_enqueued(connection) != 0 || amqp_data_in_buffer(connection) != 0 {
            self.readFrames(timeout: timeval(tv_sec: 0, tv_usec: 0))
            return
        }
        let busy = (self.connection != nil && self.machine.canSendPublish) || !self.mailbox.prepareToSleep()
        var descriptors = [pollfd(fd: self.mailbox.wakeDescriptor, events: Int16(POLLIN), revents: 0)]
        if let connection = self.connection {
            descriptors.append(pollfd(fd: amqp_get_sockfd(connection), events: Int16(POLLIN), revents: 0))
        }
        var timeout: Int32 = busy ? 0 : Self.pollInterval
        if !busy, let reconnectAt = self.machine.reconnectDeadline {
            let untilReconnect = ContinuousClock.now.duration(to: reconnectAt)
            timeout = Int32(max(0, min(Double(timeout), Backoff.seconds(untilReconnect) * 1000)))
        }
        let ready = poll(&descriptors, nfds_t(descriptors.count), timeout)
        if !busy { self.mailbox.didWake(drain: descriptors[0].revents != 0) }
        guard self.connection != nil else { return }
        if descriptors.count > 1, descriptors[1].revents != 0 {
            self.readFrames(timeout: timeval(tv_sec: 0, tv_usec: 0))
        } else if ready == 0, !busy {
            // Idle: let the library send a due heartbeat and notice a missed one. A 1 ms wait is
            // needed for the latter; with a zero timeout it never checks the receive deadline.
            self.readFrames(timeout: timeval(tv_sec: 0, tv_usec: 1000))
        }
    }

    /// Runs a library call under the watchdog with the given limit.
    func guarded<Result>(_ operation: String, limit: Duration? = nil, _ body: () -> Result) -> Result {
        self.watchdog.guarded(operation, limit: limit ?? self.configuration.operationTimeout + .seconds(5), body)
    }

    /// The one place a `Delivery` is made.
    func makeDelivery(_ content: ConnectionStateMachine.DeliveryContent, channel: ChannelRef) -> Delivery {
        Delivery(body: content.body, properties: content.properties, exchange: content.exchange,
                 routingKey: content.routingKey, queue: content.queue, redelivered: content.redelivered,
                 deliveryTag: content.tag, channelRef: channel, settler: self.settler)
    }

    /// "no exchange 'x' in vhost '/'" → "x".
    static func missingExchange(in error: AMQPError) -> String? {
        ConnectionStateMachine.missingExchange(in: error)
    }
}

/// Lets a `Delivery` settle itself by posting to its connection's thread.
struct MailboxSettler: DeliverySettler {
    let mailbox: Mailbox

    func settle(_ settlement: Settlement, tag: UInt64, channel: ChannelRef) async throws {
        try await withCheckedThrowingContinuation { (reply: Reply<Void>) in
            if !self.mailbox.post(.settle(settlement, tag: tag, channel: channel, reply)) {
                reply.resume(throwing: AMQPError(.deliveryExpired,
                    "the connection this message arrived on is closed; the broker redelivers the message"))
            }
        }
    }
}
