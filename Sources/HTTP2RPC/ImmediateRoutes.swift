#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import GRPCCore
import SwiftProtobuf

/// What an immediate handler may read of its call besides the request message. Its metadata is
/// not kept: methods that need it (a token) are not answered on the loop.
public struct ImmediateCall {
    /// The method path, "/package.Service/Method".
    public let path: String
    /// Shared by the calls answered from one read of the connection's socket.
    public let scope: ImmediateReadScope
}

/// Unary methods answered on the connection's event-loop thread, as soon as the request has
/// arrived: no task, no thread hop. Only for handlers that never wait (a point read of a local
/// store, a health flag); everything else goes through the grpc-swift services and interceptors.
public struct ImmediateRoutes: Sendable {
    typealias Handler = @Sendable (UnsafeRawBufferPointer, ImmediateCall) -> Result<[UInt8], RPCError>

    struct Route: Sendable {
        let path: String
        let pathBytes: [UInt8]
        let handler: Handler
    }

    /// A handful of routes, found by comparing bytes: no String is made for a request's
    /// `:path` and nothing is hashed.
    private(set) var routes: [Route] = []

    public init() {}

    /// Answers `method` with `handler`; a thrown `RPCError` becomes the call's status, any other
    /// error INTERNAL.
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
        let path = "/\(method.service.fullyQualifiedService)/\(method.method)"
        self.routes.removeAll { $0.path == path }
        self.routes.append(Route(path: path, pathBytes: Array(path.utf8)) { bytes, call in
            let request: Request
            do {
                request = try Request(serializedBytes: bytes.bytes)
            } catch {
                return .failure(RPCError(code: .invalidArgument, message: "the request is not a valid \(Request.protoMessageName): \(error)"))
            }
            do {
                return .success(try handler(request, call))
            } catch let error as RPCError {
                return .failure(error)
            } catch {
                return .failure(RPCError(code: .internalError, message: "internal error: \(error)"))
            }
        })
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
