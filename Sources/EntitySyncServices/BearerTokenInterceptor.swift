import GRPCCore

/// A service's bearer token: `authorization: Bearer <token>`, compared in constant time and
/// never logged.
struct BearerToken: Sendable {
    let bytes: [UInt8]

    /// Nil when no token is configured (or it is empty): nothing is protected then.
    init?(_ token: String?) {
        guard let token, !token.isEmpty else { return nil }
        self.bytes = Array(token.utf8)
    }

    /// Throws UNAUTHENTICATED unless `header` (the call's `authorization` value) carries the token.
    func check(_ header: String?) throws {
        guard let header else {
            throw RPCError(code: .unauthenticated, message: "this call needs a token: send the metadata 'authorization: Bearer <token>'")
        }
        let prefix = "Bearer "
        guard header.count > prefix.count, header.lowercased().hasPrefix(prefix.lowercased()) else {
            throw RPCError(code: .unauthenticated, message: "malformed authorization metadata: expected 'Bearer <token>'")
        }
        guard Self.constantTimeEquals(Array(header.utf8.dropFirst(prefix.utf8.count)), self.bytes) else {
            throw RPCError(code: .unauthenticated, message: "the bearer token is not valid for this service")
        }
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

/// Requires the bearer token on the protected methods the grpc-swift services answer, when a
/// token is configured (the server's own task routes check it through `RPCCallRecorder.around`).
struct BearerTokenInterceptor: ServerInterceptor {
    let token: BearerToken?
    let protectedMethods: Set<MethodDescriptor>

    init(token: String?, protectedMethods: Set<MethodDescriptor>) {
        self.token = BearerToken(token)
        self.protectedMethods = protectedMethods
    }

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        if let token = self.token, self.protectedMethods.contains(context.descriptor) {
            try token.check(request.metadata[stringValues: "authorization"].first(where: { _ in true }))
        }
        return try await next(request, context)
    }
}
