import DequeModule

/// What the connection state machine knows about one consumer.
struct ConsumerState {
    let registration: ConsumerRegistration
    let channel: UInt16
    /// Identifies the open incarnation of `channel`; 0 while it is closed.
    var epoch: UInt64 = 0
    var consumerTag: String?
    var subscribed = false
    /// Cancelled by this process: no re-subscribe; the channel closes once nothing is unsettled.
    var cancelled = false
    /// Cancelled while subscribed: basic.cancel is still to be sent, and `cancelReplies` wait for it.
    var cancelPending = false
    var cancelReplies: [Reply<Void>] = []
    var retryAt: ContinuousClock.Instant?
    var retryAttempt = 0
    /// Delivery tags handed out and not yet acked or rejected, in delivery order.
    var unsettled: Deque<UInt64> = []
    /// The caller of `consume` waiting for the first subscription.
    var pendingReply: Reply<Void>?
    var pendingDeadline: ContinuousClock.Instant?

    init(registration: ConsumerRegistration, channel: UInt16) {
        self.registration = registration
        self.channel = channel
    }

    /// The channel closed: its deliveries can no longer be settled (the broker requeues them).
    mutating func channelLost() {
        self.epoch = 0
        self.subscribed = false
        self.consumerTag = nil
        self.cancelPending = false
        self.unsettled.removeAll()
    }

    /// `random` in 0...1 picks the jitter, so tests can fix it.
    mutating func scheduleRetry(backoff: Backoff, now: ContinuousClock.Instant, random: Double) {
        self.retryAt = now + backoff.delay(attempt: self.retryAttempt, random: random)
        self.retryAttempt += 1
    }

    mutating func settled(tag: UInt64, multiple: Bool) {
        if multiple {
            while let first = self.unsettled.first, first <= tag { self.unsettled.removeFirst() }
        } else if let index = self.unsettled.firstIndex(of: tag) {
            self.unsettled.remove(at: index)
        }
    }
}
