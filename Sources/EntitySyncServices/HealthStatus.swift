import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import GRPCCore
import Synchronization

/// Whether a process is ready to serve: NOT_SERVING until its broker connection and topology are
/// ready, and again while it drains.
public final class HealthStatus: Sendable {
    private let serving = Mutex(false)
    let changes = WakeSignal()

    public init() {}

    public var isServing: Bool { self.serving.withLock { $0 } }

    public func set(serving: Bool) {
        let changed = self.serving.withLock { state -> Bool in
            defer { state = serving }
            return state != serving
        }
        if changed { self.changes.signal() }
    }
}
