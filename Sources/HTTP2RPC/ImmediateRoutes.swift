import GRPCCore
import SwiftProtobuf

/// What an immediate handler may read of its call besides the request message. Its metadata is
/// not kept: methods that need it (a token) are not answered on the loop.
public struct ImmediateCall {
    /// The method path, "/package.Service/Method".
    public let path: String
}

/// Unary methods answered on the connection's event-loop thread, as soon as the request has
/// arrived: no task, no thread hop. Only for handlers that never wait (a point read of a local
/// store, a health flag); everything else goes through the grpc-swift services and interceptors.
public struct ImmediateRoutes: Sendable {
    typealias Handler = @Sendable (UnsafeRawBufferPointer, ImmediateCall) -> Result<[UInt8], RPCError>
    private(set) var handlers: [String: Handler] = [:]

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
        self.handlers["/\(method.service.fullyQualifiedService)/\(method.method)"] = { bytes, call in
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
        }
    }

    func handler(for path: String) -> Handler? { self.handlers[path] }

    var isEmpty: Bool { self.handlers.isEmpty }
}
