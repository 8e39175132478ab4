import Foundation

/// What the client was doing when the broker or the library reported a failure; shapes the message.
enum AMQPOperation: Sendable {
    case connect(host: String, port: Int, user: String, virtualHost: String)
    case declareExchange(String)
    case declareQueue(String)
    case inspectQueue(String)
    case bind(queue: String, exchange: String)
    case unbind(queue: String, exchange: String)
    case deleteQueue(String)
    case deleteExchange(String)
    case purgeQueue(String)
    case consume(String)
    case publish(exchange: String)
    case other(String)

    var summary: String {
        switch self {
        case .connect(let host, let port, _, let virtualHost): return "connect to \(host):\(port) vhost '\(virtualHost)'"
        case .declareExchange(let name): return "declare exchange '\(name)'"
        case .declareQueue(let name): return "declare queue '\(name)'"
        case .inspectQueue(let name): return "inspect queue '\(name)'"
        case .bind(let queue, let exchange): return "bind queue '\(queue)' to exchange '\(exchange)'"
        case .unbind(let queue, let exchange): return "unbind queue '\(queue)' from exchange '\(exchange)'"
        case .deleteQueue(let name): return "delete queue '\(name)'"
        case .deleteExchange(let name): return "delete exchange '\(name)'"
        case .purgeQueue(let name): return "purge queue '\(name)'"
        case .consume(let name): return "consume from queue '\(name)'"
        case .publish(let exchange): return "publish to exchange '\(exchange)'"
        case .other(let what): return what
        }
    }
}

/// Turns a broker's close (reply code and text) into an `AMQPError` whose message says what to do.
enum BrokerErrorTranslator {
    static func error(replyCode: UInt16, replyText: String, operation: AMQPOperation,
                      user: String, virtualHost: String) -> AMQPError {
        let detail = Self.stripCodeName(replyText)
        switch replyCode {
        case 403 where Self.isLogin(operation):
            return AMQPError(.authenticationFailed,
                             "the broker refused the login of user '\(user)' (\(detail)). Check the user name and "
                             + "password in the URL; note that RabbitMQ's 'guest' user may only connect over loopback.",
                             replyCode: replyCode)
        case 403:
            return AMQPError(.accessRefused,
                             "user '\(user)' may not \(operation.summary) in vhost '\(virtualHost)' (\(detail)). Grant the "
                             + "permission (rabbitmqctl set_permissions -p '\(virtualHost)' '\(user)' CONF WRITE READ) "
                             + "or use a user that has it.", replyCode: replyCode)
        case 530 where replyText.contains("not found"):
            return AMQPError(.virtualHostNotFound,
                             "virtual host '\(virtualHost)' does not exist on the broker (\(detail)). Create it "
                             + "(rabbitmqctl add_vhost '\(virtualHost)') or fix the vhost in the URL path.",
                             replyCode: replyCode)
        case 530:
            return AMQPError(.accessRefused,
                             "user '\(user)' may not use virtual host '\(virtualHost)' (\(detail)). Grant access with "
                             + "rabbitmqctl set_permissions -p '\(virtualHost)' '\(user)' '.*' '.*' '.*'.",
                             replyCode: replyCode)
        case 404:
            return AMQPError(.notFound,
                             "could not \(operation.summary): \(detail). Declare it first (the producer declares "
                             + "the topology at startup), or check the name and vhost '\(virtualHost)'.",
                             replyCode: replyCode)
        case 406:
            if let mismatch = QueueArgumentMismatch(replyText: replyText) {
                return AMQPError(.preconditionFailed, mismatch.explanation, replyCode: replyCode)
            }
            return AMQPError(.preconditionFailed,
                             "could not \(operation.summary): \(detail). An existing entity has other properties "
                             + "than requested: declare it with the existing properties or delete it first.",
                             replyCode: replyCode)
        case 405:
            return AMQPError(.resourceLocked,
                             "could not \(operation.summary): \(detail). Another connection holds it exclusively; "
                             + "retry once that connection is gone.", replyCode: replyCode)
        case 320:
            return AMQPError(.connectionLost,
                             "the broker closed the connection (\(detail)): an operator closed it or the broker is "
                             + "shutting down. The client reconnects by itself.", replyCode: replyCode)
        default:
            return AMQPError(.protocolError,
                             "the broker failed to \(operation.summary) with \(replyCode): \(detail).",
                             replyCode: replyCode)
        }
    }

    private static func isLogin(_ operation: AMQPOperation) -> Bool {
        if case .connect = operation { return true }
        return false
    }

    /// "NOT_FOUND - no queue 'x' in vhost '/'" → "no queue 'x' in vhost '/'".
    static func stripCodeName(_ text: String) -> String {
        guard let range = text.range(of: " - ") else { return text }
        let prefix = text[..<range.lowerBound]
        if prefix.allSatisfy({ $0.isUppercase || $0 == "_" }) { return String(text[range.upperBound...]) }
        return text
    }
}

/// RabbitMQ's PRECONDITION_FAILED for a queue redeclared with other arguments, parsed so the error
/// can name the queue and the argument.
struct QueueArgumentMismatch: Hashable {
    var queue: String
    var argument: String
    var virtualHost: String?
    /// The broker's own words for requested versus current value.
    var comparison: String

    init?(replyText: String) {
        guard let argument = Self.quoted(after: "inequivalent arg ", in: replyText),
              let queue = Self.quoted(after: "for queue ", in: replyText) else { return nil }
        self.argument = argument
        self.queue = queue
        self.virtualHost = Self.quoted(after: "in vhost ", in: replyText)
        if let colon = replyText.range(of: "': ", options: .backwards) {
            self.comparison = String(replyText[colon.upperBound...])
        } else {
            self.comparison = "the values differ"
        }
    }

    var explanation: String {
        "queue '\(self.queue)' already exists with a different '\(self.argument)' argument (\(self.comparison)). "
            + "Queue arguments cannot change once a queue exists: configure the same '\(self.argument)' as the "
            + "existing queue, or delete the queue (its messages are lost) and let it be declared again."
    }

    private static func quoted(after marker: String, in text: String) -> String? {
        guard let start = text.range(of: marker + "'") else { return nil }
        let rest = text[start.upperBound...]
        guard let end = rest.firstIndex(of: "'") else { return nil }
        return String(rest[..<end])
    }
}
