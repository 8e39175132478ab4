import AMQPClient
import EntitySyncCore
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle
import Synchronization

/// Where a process's gRPC server listens, once it does (port 0 picks a free port).
public final class ListeningAddress: Sendable {
    private let transport = Mutex<HTTP2ServerTransport.Posix?>(nil)

    func set(_ transport: HTTP2ServerTransport.Posix) { self.transport.withLock { $0 = transport } }

    /// Waits until the server is bound and returns its port.
    public func port() async throws -> Int {
        while true {
            if let transport = self.transport.withLock({ $0 }) {
                let address = try await transport.listeningAddress
                if let ipv4 = address.ipv4 { return ipv4.port }
                if let ipv6 = address.ipv6 { return ipv6.port }
                throw SyncError(.configuration, "the server listens on a non-IP address \(address)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}
