/// An error from the AMQP client: a stable `code` to switch on and a message that says what to do.
public struct AMQPError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is. New codes may be added; switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: String, Hashable, Sendable {
            case invalidURL, invalidArgument
            case connectionRefused, hostNotFound, tlsFailure, authenticationFailed
            case virtualHostNotFound, accessRefused, notFound, preconditionFailed, resourceLocked
            case connectionLost, channelClosed, protocolError
            case unroutable, nacked, confirmTimeout, timeout
            case deliveryExpired, closed
        }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        public static let invalidURL = Code(.invalidURL)
        public static let invalidArgument = Code(.invalidArgument)
        public static let connectionRefused = Code(.connectionRefused)
        public static let hostNotFound = Code(.hostNotFound)
        public static let tlsFailure = Code(.tlsFailure)
        public static let authenticationFailed = Code(.authenticationFailed)
        public static let virtualHostNotFound = Code(.virtualHostNotFound)
        public static let accessRefused = Code(.accessRefused)
        public static let notFound = Code(.notFound)
        public static let preconditionFailed = Code(.preconditionFailed)
        public static let resourceLocked = Code(.resourceLocked)
        /// The connection broke; a publish that was in flight may or may not have reached a queue.
        public static let connectionLost = Code(.connectionLost)
        public static let channelClosed = Code(.channelClosed)
        public static let protocolError = Code(.protocolError)
        /// A mandatory publish matched no queue and the broker returned it.
        public static let unroutable = Code(.unroutable)
        /// The broker refused responsibility for a publish (basic.nack).
        public static let nacked = Code(.nacked)
        /// A publish was sent but its confirm did not arrive in time.
        public static let confirmTimeout = Code(.confirmTimeout)
        /// An operation could not even start before its deadline (for example, broker unreachable).
        public static let timeout = Code(.timeout)
        /// An ack or reject for a delivery whose channel has since closed; the broker redelivers it.
        public static let deliveryExpired = Code(.deliveryExpired)
        /// The connection was closed by this process.
        public static let closed = Code(.closed)

        public var description: String { self.wrapped.rawValue }
    }

    public var code: Code
    /// Human-readable, says what went wrong and what to do about it.
    public var message: String
    /// The broker's reply code (e.g. 406) when the broker reported the failure.
    public var replyCode: UInt16?
    public var underlying: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, replyCode: UInt16? = nil, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.replyCode = replyCode
        self.underlying = underlying
    }

    /// True when trying the same operation again later may succeed.
    public var isRetryable: Bool {
        switch self.code {
        case .connectionLost, .channelClosed, .nacked, .confirmTimeout, .timeout, .connectionRefused,
             .resourceLocked:
            return true
        default:
            return false
        }
    }

    public var description: String {
        var text = "AMQPError.\(self.code): \(self.message)"
        if let underlying { text += " (cause: \(underlying))" }
        return text
    }
}
