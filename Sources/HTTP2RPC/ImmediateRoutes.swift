import GRPCCore
import SwiftProtobuf

/// What an immediate handler may read of its call besides the request message.
public struct ImmediateCall {
    /// The method path, "/package.Service/Method".
    public let path: String
    let headers: [(name: String, value: String)]

    /// The first value of a request metadata entry (lower-case name), if sent.
    public func metadata(_ name: String) -> String? {
        self.headers.first(where: { $0.name == name })?.value
    }
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
        self.handlers["/\(method.service.fullyQualifiedService)/\(method.method)"] = { bytes, call in
            let request: Request
            do {
                request = try Request(serializedBytes: bytes.bytes)
            } catch {
                return .failure(RPCError(code: .invalidArgument, message: "the request is not a valid \(Request.protoMessageName): \(error)"))
            }
            do {
                return .success(try handler(request, call).serializedBytes())
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
