/// A message delivered to a consumer. Settle it exactly once: `ack()` or `reject(requeue:)`.
///
/// A class: a delivery passes through several hands and arrays on its way to being applied,
/// and a copy of it is then one reference count, not one per string and table it holds.
public final class Delivery: Sendable {
    public let body: [UInt8]
    public let properties: AMQPProperties
    public let exchange: String
    public let routingKey: String
    public let queue: String
    /// True when the broker delivered this message before (to this or another consumer).
    public let redelivered: Bool
    /// The broker's number for this delivery on its channel.
    public let deliveryTag: UInt64
    /// The channel incarnation it arrived on: settling it after that channel closed is refused.
    public let channelRef: ChannelRef
    private let settler: any DeliverySettler

    /// A delivery that `settler` acks or rejects; made by a broker implementation.
    public init(body: [UInt8], properties: AMQPProperties, exchange: String, routingKey: String, queue: String,
                redelivered: Bool, deliveryTag: UInt64, channelRef: ChannelRef, settler: any DeliverySettler) {
        self.body = body
        self.properties = properties
        self.exchange = exchange
        self.routingKey = routingKey
        self.queue = queue
        self.redelivered = redelivered
        self.deliveryTag = deliveryTag
        self.channelRef = channelRef
        self.settler = settler
    }

    /// How many times a quorum queue has delivered this message before (`x-delivery-count`);
    /// nil on classic queues and on the first delivery.
    public var deliveryCount: Int? {
        self.properties.headers["x-delivery-count"]?.intValue.map { Int(clamping: $0) }
    }

    /// Acknowledge: the broker forgets the message. With `multiple`, also every earlier
    /// unsettled delivery of the same consumer.
    public func ack(multiple: Bool = false) async throws {
        try await self.settler.settle(.ack(multiple: multiple), tag: self.deliveryTag, channel: self.channelRef)
    }

    /// Reject one delivery. `requeue: false` dead-letters it (if the queue has a dead-letter exchange)
    /// or drops it; `requeue: true` puts it back, counting towards a quorum queue's delivery limit.
    public func reject(requeue: Bool) async throws {
        try await self.settler.settle(.reject(requeue: requeue), tag: self.deliveryTag, channel: self.channelRef)
    }
}

/// Identifies one incarnation of a channel; settling after the channel reopened is refused.
public struct ChannelRef: Sendable, Hashable {
    public var number: UInt16
    public var epoch: UInt64

    public init(number: UInt16, epoch: UInt64) {
        self.number = number
        self.epoch = epoch
    }
}

/// How a delivery is settled.
public enum Settlement: Sendable, Hashable {
    case ack(multiple: Bool)
    case reject(requeue: Bool)
}

/// Carries a delivery's ack or reject back to the broker that delivered it.
public protocol DeliverySettler: Sendable {
    func settle(_ settlement: Settlement, tag: UInt64, channel: ChannelRef) async throws
}
