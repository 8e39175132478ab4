import Foundation
import Logging
import Synchronization

/// Guards librabbitmq calls that can block forever (0.11's publish on a dead socket waits in
/// poll() with no deadline): if one call runs past its limit, the socket is shut down from this
/// thread, which makes the blocked call fail at once and the connection recover.
final class Watchdog: Sendable {
    private struct State {
        var socket: Int32 = -1
        var deadline: ContinuousClock.Instant?
        var operation = ""
        var stopped = false
    }

    private let state = Mutex(State())
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
        let thread = Thread { [self] in self.watch() }
        thread.name = "amqp-watchdog"
        thread.start()
    }

    /// The socket to shut down; -1 while there is none. Set under the same lock the watchdog acts
    /// under, so it never shuts down a descriptor number that has been closed and reused.
    func setSocket(_ descriptor: Int32) {
        self.state.withLock { $0.socket = descriptor }
    }

    func stop() {
        self.state.withLock { $0.stopped = true }
    }

    /// Runs `body` with a deadline armed.
    func guarded<Result>(_ operation: String, limit: Duration, _ body: () throws -> Result) rethrows -> Result {
        self.state.withLock { state in
            state.deadline = .now + limit
            state.operation = operation
        }
        defer { self.state.withLock { $0.deadline = nil } }
        return try body()
    }

    private func watch() {
        while true {
            Thread.sleep(forTimeInterval: 0.1)
            let (stopped, fired) = self.state.withLock { state -> (Bool, String?) in
                if state.stopped { return (true, nil) }
                guard let deadline = state.deadline, deadline < .now, state.socket >= 0 else { return (false, nil) }
                shutdown(state.socket, Int32(SHUT_RDWR))
                state.deadline = nil
                return (false, state.operation)
            }
            if stopped { return }
            if let fired {
                self.logger.warning("amqp call exceeded its deadline; socket shut down to unblock it",
                                    metadata: ["operation": "\(fired)"])
            }
        }
    }
}
