import AMQPClient
import EntitySyncCore
import GRPCCore
import HTTP2RPC
import Logging
import ServiceLifecycle
import Synchronization

/// A gRPC server serving in its own task, so that it can be stopped hard when a graceful stop
/// takes too long: a graceful close lets calls in flight finish, and a client that holds its
/// connection without reading (a hung or frozen peer) never lets it end.
final class ServerRun: Sendable {
    private enum State { case serving, stopping, forced, stopped }

    private let server: GRPCServer<HTTP2RPCTransport>
    private let task: Task<Void, any Error>
    private let state = Mutex(State.serving)
    private let logger: Logger

    init(_ server: GRPCServer<HTTP2RPCTransport>, logger: Logger) {
        self.server = server
        self.logger = logger
        self.task = Task { try await server.serve() }
    }

    /// Stops accepting calls; after `grace`, closes whatever connections are still open.
    func beginShutdown(grace: Duration) {
        self.state.withLock { if $0 == .serving { $0 = .stopping } }
        self.server.beginGracefulShutdown()
        Task {
            try? await Task.sleep(for: grace)
            let force = self.state.withLock { state -> Bool in
                guard state == .stopping else { return false }
                state = .forced
                return true
            }
            guard force else { return }
            self.logger.warning("gRPC clients did not finish within the shutdown grace period; closing their connections",
                                metadata: ["grace": "\(grace)"])
            self.task.cancel()
        }
    }

    /// Waits until the server has stopped (cancelling the caller stops it at once).
    func wait() async throws {
        let result = await withTaskCancellationHandler {
            await self.task.result
        } onCancel: {
            self.task.cancel()
        }
        let forced = self.state.withLock { state -> Bool in
            defer { state = .stopped }
            return state == .forced
        }
        if case .failure(let error) = result, !(forced && error is CancellationError) {
            throw error
        }
    }
}
