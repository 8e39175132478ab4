import AMQPClient
import EntitySyncCore

/// A host and port, as written on the command line (`127.0.0.1:50051`, `[::1]:50051`, `:50051`).
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(_ text: String) throws(SyncError) {
        let invalid = SyncError(.configuration, "'\(text)' is not host:port (for example 127.0.0.1:50051 or [::1]:50051)")
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { throw invalid }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.init(host: host.isEmpty ? "0.0.0.0" : host, port: port)
    }

    public var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
}
