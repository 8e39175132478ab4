import Foundation

/// A parsed `amqp://` or `amqps://` URL, following RabbitMQ's URI specification.
///
/// `amqp://user:pass@host:port/vhost?heartbeat=10&connection_timeout=5000&cacertfile=...`
/// The vhost is the percent-decoded path without its leading `/`; an empty or missing path
/// means the default vhost `/` (write `%2F` to name it explicitly).
public struct AMQPURL: Sendable, Hashable, CustomStringConvertible {
    public var useTLS: Bool
    public var host: String
    public var port: Int
    public var virtualHost: String
    public var user: String
    public var password: String
    /// Query parameters as given (e.g. `heartbeat`, `cacertfile`, `certfile`, `keyfile`, `verify`).
    public var query: [String: String]

    public init(useTLS: Bool = false, host: String = "127.0.0.1", port: Int? = nil, virtualHost: String = "/",
                user: String = "guest", password: String = "guest", query: [String: String] = [:]) {
        self.useTLS = useTLS
        self.host = host
        self.port = port ?? (useTLS ? 5671 : 5672)
        self.virtualHost = virtualHost
        self.user = user
        self.password = password
        self.query = query
    }

    /// One URL or a comma-separated list of them (the nodes of a cluster), in order. A comma
    /// inside a password must be percent-encoded (`%2C`).
    public static func list(_ string: String) throws(AMQPError) -> [AMQPURL] {
        let parts = string.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard !parts.contains(where: \.isEmpty) else {
            throw AMQPError(.invalidURL, "the broker URL list '\(AMQPURL.redacting(string))' has an empty entry; "
                            + "separate URLs with single commas: amqp://h1:5672/,amqp://h2:5672/")
        }
        var urls: [AMQPURL] = []
        for part in parts { urls.append(try AMQPURL(part)) }
        return urls
    }

    public init(_ string: String) throws(AMQPError) {
        func invalid(_ why: String) -> AMQPError {
            AMQPError(.invalidURL, "invalid AMQP URL '\(AMQPURL.redacting(string))': \(why). "
                + "Expected amqp://user:password@host:port/vhost or amqps://…")
        }
        let useTLS: Bool
        let rest: Substring
        if string.hasPrefix("amqp://") {
            useTLS = false
            rest = string.dropFirst("amqp://".count)
        } else if string.hasPrefix("amqps://") {
            useTLS = true
            rest = string.dropFirst("amqps://".count)
        } else {
            throw invalid("the scheme must be amqp:// or amqps://")
        }

        var authorityAndPath = rest
        var query: [String: String] = [:]
        if let questionMark = rest.firstIndex(of: "?") {
            authorityAndPath = rest[..<questionMark]
            for pair in rest[rest.index(after: questionMark)...].split(separator: "&") where !pair.isEmpty {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard let key = parts[0].removingPercentEncoding, !key.isEmpty else {
                    throw invalid("the query parameter '\(pair)' is malformed")
                }
                let value = parts.count > 1 ? (parts[1].removingPercentEncoding ?? String(parts[1])) : ""
                query[key] = value
            }
        }

        let authority: Substring
        var virtualHost = "/"
        if let slash = authorityAndPath.firstIndex(of: "/") {
            authority = authorityAndPath[..<slash]
            let path = authorityAndPath[authorityAndPath.index(after: slash)...]
            if !path.isEmpty {
                if path.contains("/") {
                    throw invalid("the vhost must be one path segment; write '/' inside it as %2F")
                }
                guard let decoded = path.removingPercentEncoding else {
                    throw invalid("the vhost '\(path)' has malformed percent-encoding")
                }
                virtualHost = decoded
            }
        } else {
            authority = authorityAndPath
        }

        var user = "guest"
        var password = "guest"
        var hostAndPort = authority
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            hostAndPort = authority[authority.index(after: at)...]
            let parts = userInfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard let decodedUser = parts[0].removingPercentEncoding else {
                throw invalid("the user name has malformed percent-encoding")
            }
            user = decodedUser
            if parts.count > 1 {
                guard let decodedPassword = parts[1].removingPercentEncoding else {
                    throw invalid("the password has malformed percent-encoding")
                }
                password = decodedPassword
            } else {
                password = ""
            }
        }

        var host = "127.0.0.1"
        var port = useTLS ? 5671 : 5672
        var portText: Substring?
        if hostAndPort.hasPrefix("[") {
            guard let close = hostAndPort.firstIndex(of: "]") else { throw invalid("an IPv6 host lacks its ']'") }
            host = String(hostAndPort[hostAndPort.index(after: hostAndPort.startIndex)..<close])
            let after = hostAndPort[hostAndPort.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty {
                throw invalid("unexpected '\(after)' after the IPv6 host")
            }
        } else if let colon = hostAndPort.lastIndex(of: ":") {
            host = String(hostAndPort[..<colon])
            portText = hostAndPort[hostAndPort.index(after: colon)...]
        } else if !hostAndPort.isEmpty {
            host = String(hostAndPort)
        }
        if host.isEmpty { host = "127.0.0.1" }
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else {
                throw invalid("the port '\(portText)' is not a number from 1 to 65535")
            }
            port = value
        }
        self.init(useTLS: useTLS, host: host, port: port, virtualHost: virtualHost, user: user,
                  password: password, query: query)
    }

    /// The URL with the password replaced, safe to log.
    public var description: String {
        let scheme = self.useTLS ? "amqps" : "amqp"
        let vhost = self.virtualHost == "/" ? "" : self.virtualHost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
        let hostPart = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "\(scheme)://\(self.user):***@\(hostPart):\(self.port)/\(vhost)"
    }

    /// Hides the passwords of a URL string (or a comma-separated list of them) that may not even
    /// parse, for error messages.
    static func redacting(_ string: String) -> String {
        string.split(separator: ",", omittingEmptySubsequences: false).map { self.redactingOne(String($0)) }
            .joined(separator: ",")
    }

    private static func redactingOne(_ string: String) -> String {
        guard let schemeEnd = string.range(of: "://"),
              let at = string[schemeEnd.upperBound...].lastIndex(of: "@") else { return string }
        let userInfo = string[schemeEnd.upperBound..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return string }
        return String(string[..<colon]) + ":***" + String(string[at...])
    }
}
