import GRPCCore

/// Records the calls the services answer with the process's `RPCCallRecorder`: metrics by method
/// and status (exported in Prometheus text format when the process serves metrics) and logs.
struct RPCMetricsInterceptor: ServerInterceptor {
    let recorder: RPCCallRecorder

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let method = RPCCallRecorder.name(context.descriptor)
        let start = ContinuousClock.now
        do {
            let response = try await next(request, context)
            if case .failure(let error) = response.accepted {
                self.recorder.record(method: method, since: start, failure: RPCCallRecorder.failure(error))
            } else {
                self.recorder.record(method: method, since: start, failure: nil)
            }
            return response
        } catch {
            self.recorder.record(method: method, since: start, failure: RPCCallRecorder.failure(error))
            throw error
        }
    }
}
