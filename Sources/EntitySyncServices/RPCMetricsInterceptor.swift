import GRPCCore
import Metrics

/// Counts RPCs by method and status code and times them by method (swift-metrics; exported in
/// Prometheus text format when the process serves metrics).
struct RPCMetricsInterceptor: ServerInterceptor {
    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let method = "\(context.descriptor.service.fullyQualifiedService)/\(context.descriptor.method)"
        let start = ContinuousClock.now
        var code = "ok"
        defer {
            Counter(label: "entitysync_rpc_requests_total", dimensions: [("method", method), ("code", code)]).increment()
            Timer(label: "entitysync_rpc_duration_seconds", dimensions: [("method", method)])
                .recordNanoseconds(Int64(start.duration(to: .now).components.attoseconds / 1_000_000_000
                                   + start.duration(to: .now).components.seconds * 1_000_000_000))
        }
        do {
            let response = try await next(request, context)
            if case .failure(let error) = response.accepted { code = "\(error.code)" }
            return response
        } catch let error as RPCError {
            code = "\(error.code)"
            throw error
        } catch {
            code = "unknown"
            throw error
        }
    }
}
