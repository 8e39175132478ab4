import EntitySyncServices
import GRPCCore
import GRPCNIOTransportHTTP2
import HTTP2RPC
import Synchronization

/// The gRPC connections of one command: one per service address, opened on first use and closed
/// when the command ends. A command that makes many calls (the demo makes about a dozen, an
/// import thousands) connects once per service instead of once per call. The calls' timeout
/// is the client's (a default sent as `grpc-timeout`), so calls that wait on purpose get a
/// client of their own.
final class CtlSession: Sendable {
    typealias Client = GRPCClient<HTTP2ClientTransport.Posix>

    /// The session of the command running in this task, if any.
    @TaskLocal static var current: CtlSession?

    private struct Key: Hashable {
        let address: HostPort
        let timeout: Duration?
    }

    private struct State {
        var clients: [Key: Client] = [:]
        var connections: [Task<Void, Never>] = []
        var closed = false
    }
    private let state = Mutex(State())

    /// The client for `address` whose calls time out after `timeout`, connecting on first use.
    func client(for address: HostPort, tls: ClientTLS?, timeout: Duration?) throws -> Client {
        let key = Key(address: address, timeout: timeout)
        return try self.state.withLock { state in
            if let client = state.clients[key] { return client }
            guard !state.closed else {
                throw CtlError(description: "internal: a gRPC call was started after its command ended")
            }
            let transport = try HTTP2ClientTransport.Posix(target: .dns(host: address.host, port: address.port),
                                                           transportSecurity: tls.transportSecurity,
                                                           serviceConfig: CtlOptions.serviceConfig(timeout: timeout))
            let client = GRPCClient(transport: transport)
            state.clients[key] = client
            // A connection that fails surfaces in the calls made on it; nothing to report here.
            state.connections.append(Task { try? await client.runConnections() })
            return client
        }
    }

    /// Closes every connection once its calls have finished, waiting `grace` at most: a
    /// connection to a service that never answered (the reason a command gave up) may never
    /// finish shutting down, and the command must still end.
    func close(grace: Duration = .seconds(2)) async {
        let (clients, connections) = self.state.withLock { state in
            state.closed = true
            return (state.clients.values, state.connections)
        }
        for client in clients { client.beginGracefulShutdown() }
        do {
            try await abandoning(at: .now + grace, late: { CancellationError() }, cancelled: { CancellationError() }) {
                for connection in connections { await connection.value }
            }
        } catch {
            for connection in connections { connection.cancel() }
        }
    }

    /// Runs `body` with a fresh session as `current` and closes it afterwards, whatever happens.
    static func run<Result>(isolation: isolated (any Actor)? = #isolation,
                            _ body: () async throws -> Result) async throws -> Result {
        let session = CtlSession()
        do {
            let result = try await self.$current.withValue(session, operation: body)
            await session.close()
            return result
        } catch {
            await session.close()
            throw error
        }
    }
}
