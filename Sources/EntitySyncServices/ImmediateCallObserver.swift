import GRPCCore
import HTTP2RPC
import Logging
import Metrics
import Synchronization

/// Records calls answered on the server's event loop the way `RPCMetricsInterceptor` records
/// the others: the `entitysync_rpc_*` metrics, and a log line per failed call (every call at
/// debug). Metric handles are made once per method and status, not per call.
final class ImmediateCallObserver: Sendable {
    private let logger: Logger
    private let counters = Mutex<[String: Counter]>([:])

    init(logger: Logger) {
        self.logger = logger
    }

    /// Wraps `handler` for `method` with the metrics and logs.
    func observed<Request: Sendable, Response: Sendable>(
        _ method: MethodDescriptor, _ handler: @escaping @Sendable (Request, ImmediateCall) throws -> Response
    ) -> @Sendable (Request, ImmediateCall) throws -> Response {
        let name = "\(method.service.fullyQualifiedService)/\(method.method)"
        let timer = Timer(label: "entitysync_rpc_duration_seconds", dimensions: [("method", name)])
        let ok = self.counter(name, code: "ok")
        return { request, call in
            let start = ContinuousClock.now
            do {
                let response = try handler(request, call)
                timer.recordNanoseconds(Self.nanoseconds(since: start))
                ok.increment()
                if self.logger.logLevel <= .debug { self.logger.debug("call answered", metadata: ["rpc.method": "\(name)"]) }
                return response
            } catch {
                timer.recordNanoseconds(Self.nanoseconds(since: start))
                let code = (error as? RPCError).map { "\($0.code)" } ?? "unknown"
                self.counter(name, code: code).increment()
                self.logger.info("call failed", metadata: [
                    "rpc.method": "\(name)", "rpc.code": "\(code)", "error": "\((error as? RPCError)?.message ?? "\(error)")",
                ])
                throw error
            }
        }
    }

    private func counter(_ method: String, code: String) -> Counter {
        self.counters.withLock { counters in
            let key = "\(method) \(code)"
            if let counter = counters[key] { return counter }
            let counter = Counter(label: "entitysync_rpc_requests_total", dimensions: [("method", method), ("code", code)])
            counters[key] = counter
            return counter
        }
    }

    private static func nanoseconds(since start: ContinuousClock.Instant) -> Int64 {
        let elapsed = start.duration(to: .now).components
        return elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000
    }
}
