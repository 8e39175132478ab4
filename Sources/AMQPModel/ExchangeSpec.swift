/// An exchange to declare.
public struct ExchangeSpec: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable {
        case fanout, direct, topic, headers
    }
    public var name: String
    public var kind: Kind
    public var durable: Bool
    public var autoDelete: Bool
    public var arguments: AMQPTable

    public init(name: String, kind: Kind = .fanout, durable: Bool = true, autoDelete: Bool = false,
                arguments: AMQPTable = [:]) {
        self.name = name
        self.kind = kind
        self.durable = durable
        self.autoDelete = autoDelete
        self.arguments = arguments
    }
}
