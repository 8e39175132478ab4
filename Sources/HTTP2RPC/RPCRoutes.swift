#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import GRPCCore
import SwiftProtobuf

/// What a handler answering on the event loop may read of its call besides the request message.
/// Its metadata is not kept: methods that need it (a token) are answered by a task.
public struct ImmediateCall {
    /// The method path, "/package.Service/Method".
    public let path: String
    /// Shared by the calls answered from one read of the connection's socket.
    public let scope: ImmediateReadScope
}

/// What a handler running as a task may read of its call besides the request message.
public struct RPCCallInfo: Sendable {
    /// The method path, "/package.Service/Method".
    public let path: String
    /// The request's metadata (headers other than pseudo-headers), as sent.
    public let metadata: [(name: String, value: String)]

    /// The first value sent for `name` (lowercase), if any.
    public func metadata(_ name: String) -> String? {
        self.metadata.first { $0.name == name }?.value
    }
}

/// Unary methods the server answers itself, without grpc-swift's router: either on the
/// connection's event-loop thread as soon as the request has arrived (no task, no thread hop;
/// for handlers that never wait: a point read of a local store, a health flag), or by a task
/// per call whose reply comes back to the connection's loop (handlers that wait: a group
/// commit, a version to arrive). Every other method goes to the grpc-swift services.
public struct RPCRoutes: Sendable {
    /// Answers a call on the loop from its request message.
    typealias ImmediateHandler = @Sendable (UnsafeRawBufferPointer, ImmediateCall) -> Result<[UInt8], RPCError>
    /// The work of a call that runs as a task; it returns the serialized reply or the status.
    typealias Job = @Sendable () async -> Result<[UInt8], RPCError>
    /// Makes a call's job from its request message (copied: the job runs on another thread).
    typealias TaskHandler = @Sendable (UnsafeRawBufferPointer, RPCCallInfo) -> Job
    /// Runs around a task call's request decoding and handler, which `body` does: a token
    /// check first, metrics of every outcome.
    public typealias Around = @Sendable (RPCCallInfo, _ body: () async throws -> [UInt8]) async throws -> [UInt8]

    enum Handler: Sendable {
        case immediate(ImmediateHandler)
        case task(TaskHandler)
    }

    struct Route: Sendable {
        let path: String
        let pathBytes: [UInt8]
        let handler: Handler
    }

    /// A handful of routes, found by comparing bytes: no String is made for a request's
    /// `:path` and nothing is hashed.
    private(set) var routes: [Route] = []

    /// Decides whether a call may go on, from its path and metadata alone; nil admits it.
    public typealias Admission = @Sendable (RPCCallInfo) -> RPCError?

    /// Asked once a call's headers are in, before any of its request is read, for every call
    /// that keeps its metadata (task routes and the grpc-swift services; calls answered on the
    /// loop carry none). A token check here answers a caller without the token UNAUTHENTICATED
    /// whatever its request holds: no size, framing or decoding error tells it anything first.
    public var admission: Admission?

    public init() {}

    /// Answers `method` on the event loop with `handler`; a thrown `RPCError` becomes the call's
    /// status, any other error INTERNAL.
    public mutating func unary<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        _ method: MethodDescriptor, _ handler: @escaping @Sendable (Request, ImmediateCall) throws -> Response
    ) {
        self.unarySerialized(method) { (request: Request, call) in try handler(request, call).serializedBytes() }
    }

    /// Like `unary`, for a handler that has its reply serialized already (stored messages passed
    /// through as they are).
    public mutating func unarySerialized<Request: SwiftProtobuf.Message>(
        _ method: MethodDescriptor, _ handler: @escaping @Sendable (Request, ImmediateCall) throws -> [UInt8]
    ) {
        self.add(method, .immediate { bytes, call in
            Self.decode(Request.self, bytes).flatMap { request in
                Self.outcome { try handler(request, call) }
            }
        })
    }

    /// Answers `method` with `handler` running as a task per call, inside `around` when given
    /// (which sees the call before its request is decoded). A client's RST_STREAM, a passed
    /// `grpc-timeout` or a closed connection cancels the task; a thrown `RPCError` becomes the
    /// call's status, any other error INTERNAL.
    public mutating func unaryAsync<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        _ method: MethodDescriptor, around: Around? = nil,
        _ handler: @escaping @Sendable (Request, RPCCallInfo) async throws -> Response
    ) {
        self.add(method, .task { bytes, call in
            let request = Array(bytes)
            return {
                await Self.outcome {
                    let body: () async throws -> [UInt8] = {
                        let reply: [UInt8] = try await handler(try Self.decode(Request.self, request).get(), call).serializedBytes()
                        return reply
                    }
                    guard let around else { return try await body() }
                    return try await around(call, body)
                }
            }
        })
    }

    private mutating func add(_ method: MethodDescriptor, _ handler: Handler) {
        let path = "/\(method.service.fullyQualifiedService)/\(method.method)"
        self.routes.removeAll { $0.path == path }
        self.routes.append(Route(path: path, pathBytes: Array(path.utf8), handler: handler))
    }

    private static func decode<Request: SwiftProtobuf.Message>(_ type: Request.Type, _ bytes: UnsafeRawBufferPointer) -> Result<Request, RPCError> {
        do {
            return .success(try Request(serializedBytes: bytes.bytes))
        } catch {
            return .failure(RPCError(code: .invalidArgument, message: "the request is not a valid \(Request.protoMessageName): \(error)"))
        }
    }

    private static func decode<Request: SwiftProtobuf.Message>(_ type: Request.Type, _ bytes: [UInt8]) -> Result<Request, RPCError> {
        do {
            return .success(try Request(serializedBytes: bytes))
        } catch {
            return .failure(RPCError(code: .invalidArgument, message: "the request is not a valid \(Request.protoMessageName): \(error)"))
        }
    }

    private static func outcome(_ body: () throws -> [UInt8]) -> Result<[UInt8], RPCError> {
        do {
            return .success(try body())
        } catch let error as RPCError {
            return .failure(error)
        } catch {
            return .failure(RPCError(code: .internalError, message: "internal error: \(error)"))
        }
    }

    private static func outcome(_ body: () async throws -> [UInt8]) async -> Result<[UInt8], RPCError> {
        do {
            return .success(try await body())
        } catch let error as RPCError {
            return .failure(error)
        } catch is CancellationError {
            return .failure(RPCError(code: .cancelled, message: "the call was cancelled"))
        } catch {
            return .failure(RPCError(code: .internalError, message: "internal error: \(error)"))
        }
    }

    func route(for path: UnsafeRawBufferPointer) -> Route? {
        guard let base = path.baseAddress else { return nil }
        for route in self.routes where route.pathBytes.count == path.count {
            let equal = route.pathBytes.withUnsafeBytes { bytes in bytes.baseAddress.map { memcmp($0, base, path.count) == 0 } ?? false }
            if equal { return route }
        }
        return nil
    }

    var isEmpty: Bool { self.routes.isEmpty }

    /// Whether `method` is answered on the event loop, where no metadata is kept and so no
    /// `admission` check runs: a method that needs a token must not be.
    public func answersOnTheLoop(_ method: MethodDescriptor) -> Bool {
        let path = "/\(method.service.fullyQualifiedService)/\(method.method)"
        return self.routes.contains { route in
            guard route.path == path, case .immediate = route.handler else { return false }
            return true
        }
    }
}

/// Lets the immediate calls that arrived in one read from a connection's socket share something
/// (a store's read transaction), ended once they are all answered. Every request in such a read
/// reached the server before the first of them is answered, so a snapshot taken then is as new as
/// anything its callers could have seen committed before they sent. Confined to the connection's
/// event loop.
public final class ImmediateReadScope {
    /// Names one kind of shared value; make one per route, once.
    public final class Key: Sendable {
        public init() {}
    }

    private var entries: [(key: ObjectIdentifier, value: AnyObject, end: () -> Void)] = []

    init() {}

    /// The value kept under `key` in this scope, made by `make` for the first call that asks;
    /// `end` is called on it when the scope ends.
    public func value<Value: AnyObject>(for key: Key, make: () throws -> Value, end: @escaping (Value) -> Void) rethrows -> Value {
        let id = ObjectIdentifier(key)
        for entry in self.entries where entry.key == id {
            if let value = entry.value as? Value { return value }
        }
        let value = try make()
        self.entries.append((id, value, { end(value) }))
        return value
    }

    /// Ends every value made in this scope.
    func end() {
        guard !self.entries.isEmpty else { return }
        let entries = self.entries
        self.entries.removeAll(keepingCapacity: true)
        for entry in entries { entry.end() }
    }
}
