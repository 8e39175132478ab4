import GRPCCore
import HTTP2RPC
import Logging
import Metrics
import Synchronization

/// Records every gRPC call the same way, whether the server's event loop answered it or a
/// service did (through `RPCMetricsInterceptor`): `entitysync_rpc_requests_total` by method and
/// status, `entitysync_rpc_duration_seconds` by method, and a log line per failed call (every
/// call at debug). Metric handles are made once per method and status, not per call.
final class RPCCallRecorder: Sendable {
    private let logger: Logger
    private let counters = Mutex<[String: Counter]>([:])
    private let timers = Mutex<[String: Timer]>([:])

    init(logger: Logger) {
        self.logger = logger
    }

    /// Records one call of `method` that started at `start`; `failure` is its status code and message.
    func record(method: String, since start: ContinuousClock.Instant, failure: (code: String, message: String)?) {
        self.timer(method).recordNanoseconds(Self.nanoseconds(since: start))
        self.counter(method, code: failure?.code ?? "ok").increment()
        if let failure {
            self.logger.info("call failed", metadata: ["rpc.method": "\(method)", "rpc.code": "\(failure.code)", "error": "\(failure.message)"])
        } else if self.logger.logLevel <= .debug {
            self.logger.debug("call answered", metadata: ["rpc.method": "\(method)"])
        }
    }

    /// Wraps an event-loop handler for `method` so that its calls are recorded.
    func observed<Request: Sendable, Response: Sendable>(
        _ method: MethodDescriptor, _ handler: @escaping @Sendable (Request, ImmediateCall) throws -> Response
    ) -> @Sendable (Request, ImmediateCall) throws -> Response {
        let name = Self.name(method)
        // Made here, once: these run on the event loop for every call, and a lookup by name
        // under a lock was 8% of a Health/Check. The metrics system is bootstrapped before the
        // services build their routes.
        let timer = self.timer(name)
        let answered = self.counter(name, code: "ok")
        let logsEveryCall = self.logger.logLevel <= .debug
        // Without a metrics endpoint nothing reads the durations: two clock reads per call saved.
        let timed = !(MetricsSystem.factory is NOOPMetricsHandler)
        return { request, call in
            let start = timed ? ContinuousClock.now : nil
            do {
                let response = try handler(request, call)
                if let start { timer.recordNanoseconds(Self.nanoseconds(since: start)) }
                answered.increment()
                if logsEveryCall { self.logger.debug("call answered", metadata: ["rpc.method": "\(name)"]) }
                return response
            } catch {
                self.record(method: name, since: start ?? .now, failure: Self.failure(error))
                throw error
            }
        }
    }

    /// What runs around each call of a method the server answers by a task: when `token` is
    /// set the call is refused without it before its request is even decoded (as
    /// `BearerTokenInterceptor` does for the grpc-swift services), and every outcome is recorded.
    func around(_ method: MethodDescriptor, token: BearerToken?) -> RPCRoutes.Around {
        let name = Self.name(method)
        let timer = self.timer(name)
        let answered = self.counter(name, code: "ok")
        let logsEveryCall = self.logger.logLevel <= .debug
        let timed = !(MetricsSystem.factory is NOOPMetricsHandler)
        return { call, body in
            let start = timed ? ContinuousClock.now : nil
            do {
                try token?.check(call.metadata("authorization"))
                let reply = try await body()
                if let start { timer.recordNanoseconds(Self.nanoseconds(since: start)) }
                answered.increment()
                if logsEveryCall { self.logger.debug("call answered", metadata: ["rpc.method": "\(name)"]) }
                return reply
            } catch {
                self.record(method: name, since: start ?? .now, failure: Self.failure(error))
                throw error
            }
        }
    }

    /// The server's admission check: without `token` (or with it empty) nothing is refused;
    /// otherwise a call of `protectedMethods` without it is refused as soon as its headers are in,
    /// before its request is read, and recorded and logged as any failed call.
    func admission(token: String?, protectedMethods: Set<MethodDescriptor>) -> RPCRoutes.Admission? {
        guard let token = BearerToken(token) else { return nil }
        let protectedPaths = Set(protectedMethods.map { "/" + Self.name($0) })
        return { call in
            guard protectedPaths.contains(call.path) else { return nil }
            do {
                try token.check(call.metadata("authorization"))
                return nil
            } catch {
                let refusal = error as? RPCError ?? RPCError(code: .unauthenticated, message: "\(error)")
                self.record(method: String(call.path.dropFirst()), since: .now, failure: Self.failure(refusal))
                return refusal
            }
        }
    }

    static func name(_ method: MethodDescriptor) -> String {
        "\(method.service.fullyQualifiedService)/\(method.method)"
    }

    static func failure(_ error: any Error) -> (code: String, message: String) {
        if error is CancellationError { return ("cancelled", "the call was cancelled") }
        guard let error = error as? RPCError else { return ("unknown", "\(error)") }
        return ("\(error.code)", error.message)
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

    private func timer(_ method: String) -> Timer {
        self.timers.withLock { timers in
            if let timer = timers[method] { return timer }
            let timer = Timer(label: "entitysync_rpc_duration_seconds", dimensions: [("method", method)])
            timers[method] = timer
            return timer
        }
    }

    private static func nanoseconds(since start: ContinuousClock.Instant) -> Int64 {
        let elapsed = start.duration(to: .now).components
        return elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000
    }
}
