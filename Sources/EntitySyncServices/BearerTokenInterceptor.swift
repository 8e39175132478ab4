import GRPCCore

/// Requires `authorization: Bearer <token>` on the protected methods when a token is configured.
/// The token is compared in constant time and never logged.
struct BearerTokenInterceptor: ServerInterceptor {
    let token: [UInt8]?
    let protectedMethods: Set<MethodDescriptor>

    init(token: String?, protectedMethods: Set<MethodDescriptor>) {
        self.token = token.flatMap { $0.isEmpty ? nil : Array($0.utf8) }
        self.protectedMethods = protectedMethods
    }

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        guard let token = self.token, self.protectedMethods.contains(context.descriptor) else {
            return try await next(request, context)
        }
        guard let header = request.metadata[stringValues: "authorization"].first(where: { _ in true }) else {
            throw RPCError(code: .unauthenticated, message: "this call needs a token: send the metadata 'authorization: Bearer <token>'")
        }
        let prefix = "Bearer "
        guard header.count > prefix.count, header.lowercased().hasPrefix(prefix.lowercased()) else {
            throw RPCError(code: .unauthenticated, message: "malformed authorization metadata: expected 'Bearer <token>'")
        }
        guard Self.constantTimeEquals(Array(header.utf8.dropFirst(prefix.utf8.count)), token) else {
            throw RPCError(code: .unauthenticated, message: "the bearer token is not valid for this service")
        }
        return try await next(request, context)
    }

    /// Compares without stopping at the first difference, so timing reveals nothing of the token.
    static func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: lhs.count ^ rhs.count)
        for index in 0..<max(lhs.count, rhs.count) {
            let left = index < lhs.count ? lhs[index] : 0
            let right = index < rhs.count ? rhs[index] : 0
            difference |= left ^ right
        }
        return difference == 0
    }
}
