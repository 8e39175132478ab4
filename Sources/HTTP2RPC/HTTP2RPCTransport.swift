import GRPCCore
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// A gRPC server transport on libnghttp2: each connection is one nghttp2 session on one event
/// loop. Methods in `routes` are answered by the server itself (on that loop, or by a task per
/// call); every other call is handed to the grpc-swift services
/// (`GRPCServer(transport:services:interceptors:)`) with its handler running as a task and its
/// replies coming back to the connection's loop.
public final class HTTP2RPCTransport: ServerTransport {
    public typealias Bytes = [UInt8]

    private struct State {
        var port: Result<Int, any Error>?
        var server: (any Channel)?
        var connections: [ObjectIdentifier: any Channel] = [:]
        var incoming: AsyncStream<IncomingRPC>.Continuation?
        var shuttingDown = false
        var serverClosed = false
        /// The services' methods by path, as registered (their descriptors carry the call type,
        /// which interceptors compare).
        var methods: [String: MethodDescriptor] = [:]
    }

    private let configuration: RPCServerConfiguration
    private let routes: RPCRoutes
    private let logger: Logger
    private let state = Mutex(State())
    private let running = RunningCalls()

    public init(configuration: RPCServerConfiguration, routes: RPCRoutes = RPCRoutes(), logger: Logger) {
        self.configuration = configuration
        self.routes = routes
        self.logger = logger
    }

    /// The bound port, once the server listens (the chosen one when configured with port 0).
    public func listeningPort() async throws -> Int {
        while true {
            if let port = self.state.withLock({ $0.port }) { return try port.get() }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    public func listen(streamHandler: @escaping @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void) async throws {
        let (incoming, continuation) = AsyncStream<IncomingRPC>.makeStream()
        let alreadyStopping = self.state.withLock { state -> Bool in
            state.incoming = continuation
            return state.shuttingDown
        }
        if alreadyStopping {
            continuation.finish()
            self.state.withLock { $0.port = .failure(CancellationError()) }
            return
        }
        // A group of its own when a thread count is set, made here so that a server stopped
        // before it listens starts no threads, and shut down on every way out of here: the
        // calls on its loops are children of this function's task group and end first.
        let ownGroup = self.configuration.loopThreads.map { MultiThreadedEventLoopGroup(numberOfThreads: max(1, $0)) }
        defer { ownGroup?.shutdownGracefully { _ in } }
        let group: any EventLoopGroup = ownGroup ?? MultiThreadedEventLoopGroup.singleton
        let server: any Channel
        do {
            server = try await self.bind(continuation, group: group)
        } catch {
            self.state.withLock { $0.port = .failure(error) }
            continuation.finish()
            throw error
        }
        let port = server.localAddress?.port ?? self.configuration.port
        let stopNow = self.state.withLock { state -> Bool in
            state.server = server
            state.port = .success(port)
            return state.shuttingDown
        }
        server.closeFuture.whenComplete { _ in
            self.state.withLock { state in
                state.serverClosed = true
                self.finishIfDrained(&state)
            }
        }
        if stopNow { server.close(promise: nil) }
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                for await call in incoming {
                    group.addTask { await Self.run(call, streamHandler) }
                }
            }
            // Every connection has closed or is closing, which cancels the calls it had running.
            await self.running.closeAndDrain()
        } onCancel: {
            self.forceClose()
        }
    }

    public func configure(context: GRPCServerContext) {
        let methods = Dictionary(context.methods.map { ("/\($0.fullyQualifiedMethod)", $0) }, uniquingKeysWith: { first, _ in first })
        self.state.withLock { $0.methods = methods }
    }

    public func beginGracefulShutdown() {
        let (server, connections) = self.state.withLock { state -> ((any Channel)?, [any Channel]) in
            state.shuttingDown = true
            if state.port == nil { state.port = .failure(CancellationError()) }
            if state.server == nil { state.incoming?.finish() }
            return (state.server, Array(state.connections.values))
        }
        server?.close(promise: nil)
        for channel in connections {
            channel.pipeline.handler(type: HTTP2Connection.self).whenSuccess { connection in
                connection.quiesce()
            }
        }
    }

    /// Closes the listener and every connection now; their calls are cancelled.
    public func forceClose() {
        let (server, connections) = self.state.withLock { state -> ((any Channel)?, [any Channel]) in
            state.shuttingDown = true
            if state.port == nil { state.port = .failure(CancellationError()) }
            state.incoming?.finish()
            return (state.server, Array(state.connections.values))
        }
        server?.close(promise: nil)
        for channel in connections { channel.close(promise: nil) }
    }

    private func bind(_ incoming: AsyncStream<IncomingRPC>.Continuation, group: any EventLoopGroup) async throws -> any Channel {
        let tls: NIOSSLContext? = try self.configuration.tls.map { configuration in
            var configuration = configuration
            configuration.applicationProtocols = ["h2"]
            return try NIOSSLContext(configuration: configuration)
        }
        let methods = self.state.withLock { $0.methods }
        let shared = HTTP2Connection.Shared(configuration: self.configuration, routes: self.routes, methods: methods,
                                            running: self.running, logger: self.logger) { call in
            if case .enqueued = incoming.yield(call) { return true }
            return false
        }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                self.register(channel)
                return channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                    }
                    try channel.pipeline.syncOperations.addHandler(HTTP2Connection(shared: shared))
                }
            }
        return try await bootstrap.bind(host: self.configuration.host, port: self.configuration.port).get()
    }

    private func register(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        let refuse = self.state.withLock { state -> Bool in
            guard !state.shuttingDown else { return true }
            state.connections[id] = channel
            return false
        }
        if refuse {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { _ in
            self.state.withLock { state in
                state.connections[id] = nil
                self.finishIfDrained(&state)
            }
        }
    }

    /// No more calls can arrive once the listener and every connection have closed.
    private func finishIfDrained(_ state: inout State) {
        if state.shuttingDown, state.serverClosed, state.connections.isEmpty {
            state.incoming?.finish()
        }
    }

    private static func run(_ call: IncomingRPC,
                            _ handler: @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void) async {
        await withServerContextRPCCancellationHandle { cancellation in
            call.outbound.attach(cancellation)
            let stream = RPCStream(descriptor: call.descriptor, inbound: RPCAsyncSequence(wrapping: call.inbound),
                                   outbound: RPCWriter.Closable(wrapping: call.outbound))
            let context = ServerContext(descriptor: call.descriptor, remotePeer: call.remotePeer, localPeer: call.localPeer,
                                        cancellation: cancellation)
            await handler(stream, context)
        }
        // A handler that ended without writing a status leaves the call to be ended here.
        await call.outbound.finish()
    }
}
