import Foundation
import Synchronization

/// Properties of a message; what the broker and consumers see besides the body.
public struct AMQPProperties: Sendable, Hashable {
    public var contentType: String?
    public var contentEncoding: String?
    public var messageID: String?
    public var correlationID: String?
    public var type: String?
    public var appID: String?
    /// Seconds since 1970, as AMQP carries it.
    public var timestamp: UInt64?
    /// Per-message TTL in milliseconds, as a decimal string (AMQP's representation).
    public var expiration: String?
    /// 2 = persistent (survives a broker restart in a durable queue), 1 = transient.
    public var deliveryMode: UInt8?
    public var headers: AMQPTable

    public init(contentType: String? = nil, contentEncoding: String? = nil, messageID: String? = nil,
                correlationID: String? = nil, type: String? = nil, appID: String? = nil,
                timestamp: UInt64? = nil, expiration: String? = nil, deliveryMode: UInt8? = nil,
                headers: AMQPTable = [:]) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.messageID = messageID
        self.correlationID = correlationID
        self.type = type
        self.appID = appID
        self.timestamp = timestamp
        self.expiration = expiration
        self.deliveryMode = deliveryMode
        self.headers = headers
    }
}

/// A message to publish. Persistent by default, with a fresh message id and the current time.
public struct OutgoingMessage: Sendable {
    public var body: [UInt8]
    public var properties: AMQPProperties

    public init(body: [UInt8], contentType: String = "application/octet-stream", messageID: String? = nil,
                headers: AMQPTable = [:], persistent: Bool = true, type: String? = nil, appID: String? = nil) {
        self.body = body
        self.properties = AMQPProperties(
            contentType: contentType,
            messageID: messageID ?? MessageID.next(),
            type: type,
            appID: appID,
            timestamp: UInt64(max(0, Date().timeIntervalSince1970)),
            deliveryMode: persistent ? 2 : 1,
            headers: headers
        )
    }

    public init(body: [UInt8], properties: AMQPProperties) {
        self.body = body
        self.properties = properties
        if self.properties.messageID == nil { self.properties.messageID = MessageID.next() }
    }
}

/// Unique message ids without a random-number syscall per message: a random 64-bit prefix per
/// process and a counter.
enum MessageID {
    private static let prefix = String(UInt64.random(in: .min ... .max), radix: 16)
    private static let counter = Atomic<UInt64>(0)

    static func next() -> String {
        "\(self.prefix)-\(self.counter.wrappingAdd(1, ordering: .relaxed).newValue)"
    }
}

/// A message delivered to a consumer. Settle it exactly once: `ack()` or `reject(requeue:)`.
public struct Delivery: Sendable {
    public let body: [UInt8]
    public let properties: AMQPProperties
    public let exchange: String
    public let routingKey: String
    public let queue: String
    /// True when the broker delivered this message before (to this or another consumer).
    public let redelivered: Bool
    let deliveryTag: UInt64
    let channelRef: ChannelRef
    let settler: any DeliverySettler

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
struct ChannelRef: Sendable, Hashable {
    var number: UInt16
    var epoch: UInt64
}

enum Settlement: Sendable, Hashable {
    case ack(multiple: Bool)
    case reject(requeue: Bool)
}

protocol DeliverySettler: Sendable {
    func settle(_ settlement: Settlement, tag: UInt64, channel: ChannelRef) async throws
}
