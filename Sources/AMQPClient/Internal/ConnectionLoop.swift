import CRabbitMQ
import DequeModule
import Foundation
import Logging

/// The only code that calls librabbitmq for one connection. It runs on a thread of its own
/// (the library blocks and is not thread-safe), services heartbeats, sends publishes within the
/// confirm window, dispatches incoming frames, and recovers the connection when it breaks.
/// Tasks talk to it only through the `Mailbox`.
final class ConnectionLoop {
    static let controlChannel: UInt16 = 1
    static let publishChannel: UInt16 = 2
    /// Consumers get channels from here up to `channelLimit`, reused once closed (see
    /// `allocateConsumerChannel`).
    static let firstConsumerChannel: UInt16 = 3
    /// The channel_max this client asks for at login; RabbitMQ's default is the same.
    static let channelMax: UInt16 = 2047
    static let pollInterval: Int32 = 100

    let configuration: AMQPConfiguration
    let mailbox: Mailbox
    let watchdog: Watchdog
    let settler: MailboxSettler
    var logger: Logger
    let arena = CArena()

    var connection: amqp_connection_state_t?
    var connectionCount = 0
    var lastError: AMQPError?
    var reconnectAttempt = 0
    var nextReconnectAt: ContinuousClock.Instant = .now
    var blocked = false
    var controlChannelOpen = false
    var publishChannelOpen = false
    var channelEpoch: UInt64 = 0
    /// The highest channel number the broker agreed to at login (it may allow fewer than asked).
    var channelLimit = ConnectionLoop.channelMax
    /// Consumer channels closed while frames were queued in the library: some of those frames may
    /// belong to them, so they are not handed out again until the queue has been read.
    var quarantinedChannels: Set<UInt16> = []

    var confirms = ConfirmTracker<PublishRequest>()
    var unsent: Deque<PublishRequest> = []
    var pendingOperations: Deque<PendingOperation> = []
    var consumers: [Int: ConsumerState] = [:]
    var topology = RecordedTopology()
    var closing: Closing?
    var finished = false

    struct PendingOperation {
        var command: Command
        var deadline: ContinuousClock.Instant
    }

    struct Closing {
        var deadline: ContinuousClock.Instant
        var replies: [Reply<Void>]
    }

    init(configuration: AMQPConfiguration, mailbox: Mailbox, logger: Logger) {
        self.configuration = configuration
        self.mailbox = mailbox
        self.settler = MailboxSettler(mailbox: mailbox)
        var logger = logger
        logger[metadataKey: "amqp.broker"] = "\(configuration.url.host):\(configuration.url.port)"
        logger[metadataKey: "amqp.vhost"] = "\(configuration.url.virtualHost)"
        logger[metadataKey: "amqp.connection_name"] = "\(configuration.connectionName)"
        self.logger = logger
        self.watchdog = Watchdog(logger: logger)
    }

    /// Connects once (reporting the outcome to `initial`), then serves commands until closed.
    func run(initial: Reply<Void>) {
        do {
            try self.establish()
            initial.resume()
        } catch {
            if let connection = self.connection {
                self.watchdog.setSocket(-1)
                amqp_destroy_connection(connection)
                self.connection = nil
            }
            initial.resume(throwing: error)
            self.watchdog.stop()
            for command in self.mailbox.shutDown() { self.refuse(command, with: Self.closedError) }
            return
        }
        while !self.finished {
            // Method replies of synchronous calls (declares, queue inspections) are decoded into
            // per-channel pools that only this releases; without it every GetSyncStatus grows memory.
            if let connection = self.connection { amqp_maybe_release_buffers(connection) }
            for command in self.mailbox.takeAll() { self.handle(command) }
            if self.connection == nil, self.closing == nil, ContinuousClock.now >= self.nextReconnectAt {
                self.reconnect()
            }
            if self.connection != nil {
                self.runPendingOperations()
                self.resubscribeDueConsumers()
                self.closeDrainedConsumers()
                self.flushPublishes()
            }
            self.expireDeadlines()
            self.advanceClosing()
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
        let busy = (self.connection != nil && self.canSendPublish) || !self.mailbox.prepareToSleep()
        var descriptors = [pollfd(fd: self.mailbox.wakeDescriptor, events: Int16(POLLIN), revents: 0)]
        if let connection = self.connection {
            descriptors.append(pollfd(fd: amqp_get_sockfd(connection), events: Int16(POLLIN), revents: 0))
        }
        var timeout: Int32 = busy ? 0 : Self.pollInterval
        if !busy, self.connection == nil, self.closing == nil {
            let untilReconnect = ContinuousClock.now.duration(to: self.nextReconnectAt)
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

    var canSendPublish: Bool {
        !self.unsent.isEmpty && self.publishChannelOpen && !self.blocked
            && self.confirms.outstanding < self.configuration.confirmWindow
    }

    /// Runs a library call under the watchdog with the given limit.
    func guarded<Result>(_ operation: String, limit: Duration? = nil, _ body: () -> Result) -> Result {
        self.watchdog.guarded(operation, limit: limit ?? self.configuration.operationTimeout + .seconds(5), body)
    }

    static let closedError = AMQPError(.closed, "the AMQP connection has been closed by this process; open a new one")

    /// Answers a command that cannot be carried out with `error`.
    func refuse(_ command: Command, with error: AMQPError) {
        switch command {
        case .publish(let request): request.fail(error)
        case .publishBatch(let requests): for request in requests { request.fail(error) }
        case .declareExchange(_, let reply), .bind(_, let reply), .unbind(_, let reply), .deleteExchange(_, let reply),
             .consume(_, let reply), .cancelConsumer(_, let reply), .settle(_, _, _, let reply):
            reply.resume(throwing: error)
        case .declareQueue(_, let reply), .inspectQueue(_, let reply): reply.resume(throwing: error)
        case .deleteQueue(_, _, let reply), .purgeQueue(_, let reply): reply.resume(throwing: error)
        case .status(let reply): reply.resume(returning: self.status)
        case .close(_, let reply): reply?.resume()
        case .abandonConsumer: break
        }
        if case .consume(let registration, _) = command { registration.continuation.finish() }
    }

    var status: ConnectionStatus {
        ConnectionStatus(
            isConnected: self.connection != nil,
            connectionCount: self.connectionCount,
            unconfirmedPublishes: self.confirms.outstanding,
            queuedPublishes: self.unsent.count,
            isBlocked: self.blocked,
            activeConsumers: self.consumers.values.filter(\.subscribed).count,
            lastError: self.connection == nil ? self.lastError?.message : nil
        )
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
