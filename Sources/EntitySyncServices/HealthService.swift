import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import GRPCCore
import Synchronization

/// The standard `grpc.health.v1.Health` service. The overall status is asked for with the
/// empty service name; each served service can also be asked for by its full name.
struct HealthService: Grpc_Health_V1_Health.SimpleServiceProtocol {
    let status: HealthStatus
    let services: Set<String>

    func check(request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext) async throws -> Grpc_Health_V1_HealthCheckResponse {
        try self.requireKnown(request)
        return self.response()
    }

    /// Check, serialized: the server answers it on its event loop from one of two fixed replies.
    func checkSerialized(_ request: Grpc_Health_V1_HealthCheckRequest) throws -> [UInt8] {
        try self.requireKnown(request)
        return self.status.isServing ? Self.serving : Self.notServing
    }

    private func requireKnown(_ request: Grpc_Health_V1_HealthCheckRequest) throws {
        guard request.service.isEmpty || self.services.contains(request.service) else {
            throw RPCError(code: .notFound, message: "unknown service '\(request.service)'")
        }
    }

    private static let serving = Self.serialized(.serving)
    private static let notServing = Self.serialized(.notServing)

    private static func serialized(_ status: Grpc_Health_V1_HealthCheckResponse.ServingStatus) -> [UInt8] {
        var response = Grpc_Health_V1_HealthCheckResponse()
        response.status = status
        // Encoding an enum field cannot fail; an empty reply would read as UNKNOWN, never as SERVING.
        return (try? response.serializedBytes()) ?? []
    }

    func watch(request: Grpc_Health_V1_HealthCheckRequest, response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
               context: ServerContext) async throws {
        guard request.service.isEmpty || self.services.contains(request.service) else {
            var unknown = Grpc_Health_V1_HealthCheckResponse()
            unknown.status = .serviceUnknown
            try await response.write(unknown)
            return
        }
        var last: Bool?
        while !Task.isCancelled {
            let serving = self.status.isServing
            if serving != last {
                try await response.write(self.response())
                last = serving
            }
            await self.status.changes.wait(timeout: .seconds(1))
        }
    }

    private func response() -> Grpc_Health_V1_HealthCheckResponse {
        var response = Grpc_Health_V1_HealthCheckResponse()
        response.status = self.status.isServing ? .serving : .notServing
        return response
    }
}
