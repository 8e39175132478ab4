import AMQPClient
import EntitySyncCore
import GRPCCore

/// Maps the core's and the broker client's errors to the gRPC status a client expects. This is
/// the only place errors become `RPCError`.
enum RPCErrors {
    static func map(_ error: any Error) -> RPCError {
        switch error {
        case let error as RPCError:
            return error
        case let error as SyncError:
            switch error.code {
            case .invalidArgument: return RPCError(code: .invalidArgument, message: error.message)
            case .notFound: return RPCError(code: .notFound, message: error.message)
            case .alreadyExists: return RPCError(code: .alreadyExists, message: error.message)
            case .versionMismatch: return RPCError(code: .aborted, message: error.message)
            case .storeUnavailable, .brokerUnavailable: return RPCError(code: .unavailable, message: error.message)
            case .storeRejected: return RPCError(code: .internalError, message: error.message)
            default: return RPCError(code: .failedPrecondition, message: error.message)
            }
        case let error as AMQPError:
            return RPCError(code: .unavailable, message: "the message broker is unavailable: \(error.message)")
        case is CancellationError:
            return RPCError(code: .cancelled, message: "the call was cancelled")
        default:
            return RPCError(code: .internalError, message: "internal error: \(error)")
        }
    }

    /// Runs `body`, turning any failure into the matching `RPCError`.
    static func mapping<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw self.map(error)
        }
    }

    static func invalid(_ message: String) -> RPCError { RPCError(code: .invalidArgument, message: message) }
}
