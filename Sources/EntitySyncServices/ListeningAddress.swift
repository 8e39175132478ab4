import AMQPClient
import EntitySyncCore
import GRPCCore
import HTTP2RPC
import Logging
import ServiceLifecycle
import Synchronization

/// Where a process's gRPC server listens, once it does (port 0 picks a free port).
public final class ListeningAddress: Sendable {
    private let transport = Mutex<HTTP2RPCTransport?>(nil)

    func set(_ transport: HTTP2RPCTransport) { self.transport.withLock { $0 = transport } }

    /// Waits until the server is bound and returns its port.
    public func port() async throws -> Int {
        while true {
            if let transport = self.transport.withLock({ $0 }) {
                return try await transport.listeningPort()
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}
