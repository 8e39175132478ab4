/// A subscription to one queue. Iterate `deliveries`; settle each delivery with ack or reject.
public final class BrokerConsumer: Sendable {
    public let queue: String
    /// Ends when the consumer is cancelled or its connection closes.
    public let deliveries: DeliveryStream
    private let stop: @Sendable () async -> Void

    /// A consumer whose `cancel()` runs `cancel`; made by a broker implementation.
    public init(queue: String, deliveries: DeliveryStream, cancel: @escaping @Sendable () async -> Void) {
        self.queue = queue
        self.deliveries = deliveries
        self.stop = cancel
    }

    /// Stops new deliveries. Deliveries already received can still be settled; the channel
    /// closes once they are. Keep reading `deliveries` until it ends and settle each one: a
    /// delivery never settled keeps the channel open and its message unavailable to others.
    public func cancel() async {
        await self.stop()
    }
}
