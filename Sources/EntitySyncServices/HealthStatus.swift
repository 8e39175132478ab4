import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import GRPCCore
import Synchronization

/// Whether a process is ready to serve: NOT_SERVING until its broker connection and topology are
/// ready, again while it drains, and while its store cannot be reached.
public final class HealthStatus: Sendable {
    private struct State {
        var ready = false
        var storeAvailable = true
        var serving: Bool { self.ready && self.storeAvailable }
    }
    private let state = Mutex(State())
    let changes = WakeSignal()

    public init() {}

    public var isServing: Bool { self.state.withLock { $0.serving } }

    /// Ready (started) or not (starting, draining).
    public func set(serving: Bool) {
        self.update { $0.ready = serving }
    }

    /// Whether the store answers; a consumer paused on its store is NOT_SERVING meanwhile.
    public func set(storeAvailable: Bool) {
        self.update { $0.storeAvailable = storeAvailable }
    }

    private func update(_ body: (inout State) -> Void) {
        let changed = self.state.withLock { state -> Bool in
            let before = state.serving
            body(&state)
            return before != state.serving
        }
        if changed { self.changes.signal() }
    }
}
