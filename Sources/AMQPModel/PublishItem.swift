/// One message of a batch publish and where it goes.
public struct PublishItem: Sendable {
    public var message: OutgoingMessage
    public var exchange: String
    public var routingKey: String
    public var mandatory: Bool

    public init(_ message: OutgoingMessage, exchange: String, routingKey: String = "", mandatory: Bool = true) {
        self.message = message
        self.exchange = exchange
        self.routingKey = routingKey
        self.mandatory = mandatory
    }
}
