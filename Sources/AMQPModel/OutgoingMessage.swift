import Foundation
import Synchronization

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
