import GRPCCore
import NIOCore
import NIOPosix
import NIOSSL
import SwiftProtobuf
import Synchronization

/// A unary gRPC client on libnghttp2 over one HTTP/2 connection, for callers that make many
/// small calls (a bulk import): a call is a stream of the connection, its bytes moved on the
/// connection's event loop, with no task, channel or async sequence of its own. Errors are
/// `RPCError`s, as grpc-swift's client throws.
public final class RPCClient: Sendable {
    private struct Connection: Sendable {
        let channel: any Channel
        let handler: NIOLoopBound<HTTP2ClientConnection>
        let flags: ClientConnectionFlags

        /// Takes new calls: open, and no GOAWAY from the server.
        var isUsable: Bool { self.channel.isActive && !self.flags.goingAway.load(ordering: .relaxed) }
    }

    private enum Next {
        case ready(Connection)
        case wait(Task<Connection, any Error>)
    }

    private enum State {
        case idle
        case connecting(Task<Connection, any Error>)
        case connected(Connection)
        case closed
    }

    private let host: String
    private let port: Int
    private let tls: NIOSSLContext?
    private let group: any EventLoopGroup
    private let target: String
    private let callTimeout: Duration?
    private let probeTimeout: Duration
    private let state = Mutex(State.idle)

    /// A client of `host:port`, over TLS with ALPN `h2` when `tls` is set (the server's
    /// certificate must name `host`), h2c with prior knowledge otherwise. It connects on its
    /// first call, and again on the first call after the connection was lost. `callTimeout` is
    /// every call's deadline unless the call names its own; nil waits as long as the server takes.
    /// After a call overruns its deadline the server is sent a PING; with no answer within
    /// `probeTimeout` the connection is closed, and the next call connects anew.
    public init(host: String, port: Int, tls: TLSConfiguration? = nil, callTimeout: Duration? = nil,
                probeTimeout: Duration = .seconds(10),
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
        self.host = host
        self.port = port
        self.callTimeout = callTimeout
        self.probeTimeout = probeTimeout
        self.target = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        self.tls = try tls.map { configuration in
            var configuration = configuration
            configuration.applicationProtocols = ["h2"]
            return try NIOSSLContext(configuration: configuration)
        }
        self.group = group
    }

    /// The open connection, or a new one when there is none (one connect for all callers).
    private func connection() async throws -> Connection {
        let next = try self.state.withLock { state -> Next in
            switch state {
            case .connected(let connection) where connection.isUsable:
                return .ready(connection)
            case .connecting(let task):
                return .wait(task)
            case .closed:
                throw RPCError(code: .unavailable, message: "the client of \(self.target) is closed")
            case .idle, .connected(_):
                // A connection the server is closing finishes its calls on its own, then closes.
                let task = Task { try await self.open() }
                state = .connecting(task)
                return .wait(task)
            }
        }
        switch next {
        case .ready(let connection):
            return connection
        case .wait(let task):
            do {
                let connection = try await task.value
                // Only for the connect still under way: a late waiter must not replace a newer one.
                self.state.withLock { state in
                    if case .connecting(let current) = state, current == task { state = .connected(connection) }
                }
                return connection
            } catch {
                self.state.withLock { state in
                    if case .connecting(let current) = state, current == task { state = .idle }
                }
                throw error
            }
        }
    }

    private func open() async throws -> Connection {
        let target = self.target
        let context = self.tls
        let probe = TimeAmount(max(.zero, self.probeTimeout))
        // SNI carries names only; an address is checked against the certificate's IP entries.
        let serverHostname = (try? SocketAddress(ipAddress: self.host, port: 0)) == nil ? self.host : nil
        let bootstrap = ClientBootstrap(group: self.group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let context {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: serverHostname))
                    }
                    try channel.pipeline.syncOperations.addHandler(HTTP2ClientConnection(authority: target, tls: context != nil, probeTimeout: probe))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: self.host, port: self.port).get()
        } catch {
            throw RPCError(code: .unavailable, message: "cannot connect to \(target): \(error)")
        }
        do {
            // Calls start once the server's SETTINGS are in: its stream limit is then known, and
            // nghttp2 holds back what goes beyond it instead of the server refusing it.
            return try await channel.eventLoop.flatSubmit {
                do {
                    let handler = try channel.pipeline.syncOperations.handler(type: HTTP2ClientConnection.self)
                    let connection = Connection(channel: channel, handler: NIOLoopBound(handler, eventLoop: channel.eventLoop),
                                                flags: handler.flags)
                    return handler.ready(on: channel.eventLoop).map { connection }
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }.get()
        } catch let error as RPCError {
            channel.close(promise: nil)
            throw RPCError(code: .unavailable, message: "cannot connect to \(target): \(error.message)")
        } catch {
            // The server closed the connection at once (it is shutting down).
            channel.close(promise: nil)
            throw RPCError(code: .unavailable, message: "the connection to \(target) closed as it opened: \(error)")
        }
    }

    /// Calls the unary `method` with `request`; cancelling the caller's task cancels the call.
    /// With a `timeout` (or the client's `callTimeout`), the server is sent it as `grpc-timeout`
    /// and the call fails with DEADLINE_EXCEEDED once it passes, whatever the server does.
    public func unary<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        _ method: MethodDescriptor, _ request: Request, metadata: [(name: String, value: String)] = [],
        timeout: Duration? = nil, as response: Response.Type = Response.self
    ) async throws -> Response {
        let framed = try Self.framed(request)
        let path = "/\(method.service.fullyQualifiedService)/\(method.method)"
        let box = CallBox()
        // Longer than grpc-timeout can say is as good as no end; clamped, the clock sums below cannot overflow.
        let timeout = (timeout ?? self.callTimeout).map { min($0, GRPCWire.longestTimeout) }
        if let timeout, timeout <= .zero {
            throw RPCError(code: .deadlineExceeded, message: "the call's deadline (\(timeout)) had passed before it started")
        }
        let started = ContinuousClock.now
        // The deadline counts from here: a connect that takes long uses up the call's time.
        let current = try await self.connectionWithin(timeout, since: started)
        var metadata = metadata
        if let timeout {
            // The server is told what is left, as gRPC clients do, not what the caller first gave.
            let left = timeout - (ContinuousClock.now - started)
            guard left > .zero else {
                throw RPCError(code: .deadlineExceeded, message: "the call's deadline of \(timeout) passed while connecting to \(self.target)")
            }
            metadata.append(("grpc-timeout", GRPCWire.timeoutHeader(left)))
        }
        let headers = metadata
        let loop = current.channel.eventLoop
        let connection = current.handler
        let reply = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (done: CheckedContinuation<[UInt8], any Error>) in
                loop.execute {
                    let call = ClientCall(request: framed, completion: done)
                    box.call = call
                    if box.cancelled {
                        call.complete(.failure(RPCError(code: .cancelled, message: "the call was cancelled")))
                        return
                    }
                    if let timeout {
                        let left = max(.zero, timeout - (ContinuousClock.now - started))
                        let expiring = NIOLoopBound(call, eventLoop: loop)
                        call.deadline = loop.scheduleTask(in: TimeAmount(left)) {
                            connection.value.expire(expiring.value, after: timeout)
                        }
                    }
                    connection.value.start(call, path: path, metadata: headers)
                }
            }
        } onCancel: {
            loop.execute {
                box.cancelled = true
                if let call = box.call { connection.value.cancel(call) }
            }
        }
        do {
            return try Response(serializedBytes: reply)
        } catch {
            throw RPCError(code: .internalError, message: "\(self.target) sent a reply that is not a valid \(Response.protoMessageName): \(error)")
        }
    }

    /// The connection, within what is left of a call's deadline. A connect that overruns it
    /// goes on for later calls; this call stops waiting for it.
    private func connectionWithin(_ timeout: Duration?, since started: ContinuousClock.Instant) async throws -> Connection {
        guard let timeout else { return try await self.connection() }
        let usable = self.state.withLock { state -> Connection? in
            if case .connected(let connection) = state, connection.isUsable { return connection }
            return nil
        }
        if let usable { return usable }
        let target = self.target
        // A connect that overruns goes on for later calls (it is a task of the client's own,
        // which cancelling this wait does not touch); this call stops waiting for it.
        return try await abandoning(at: started + timeout, late: {
            RPCError(code: .deadlineExceeded, message: "the call's deadline of \(timeout) passed while connecting to \(target)")
        }, cancelled: {
            RPCError(code: .cancelled, message: "the call was cancelled")
        }) {
            try await self.connection()
        }
    }

    private static func framed(_ request: some SwiftProtobuf.Message) throws -> [UInt8] {
        var framed: [UInt8] = []
        GRPCWire.appendFramed(try request.serializedBytes(), to: &framed)
        return framed
    }

    /// Closes the connection; calls still running fail with UNAVAILABLE, later ones at once.
    public func close() async {
        let previous = self.state.withLock { state -> State in
            defer { state = .closed }
            return state
        }
        switch previous {
        case .connected(let connection): try? await connection.channel.close()
        case .connecting(let task):
            // A connect still waiting for the server may take until its own timeout: it is closed
            // when it ends, without holding the caller.
            Task { try? await task.value.channel.close() }
        case .idle, .closed: break
        }
    }
}

/// Where a call and its cancellation meet, on the connection's event loop only.
private final class CallBox: @unchecked Sendable {
    // @unchecked: both fields are read and written on the connection's event loop alone (every
    // access is inside `loop.execute`), which serialises them.
    var call: ClientCall?
    var cancelled = false
}
