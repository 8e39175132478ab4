import CRabbitMQ
import Foundation
import Synchronization

/// Hands commands from any task to one connection thread, waking it from poll() through an eventfd
/// only when it is actually asleep (one syscall per sleep, not per command).
final class Mailbox: Sendable {
    private struct State {
        var commands: [Command] = []
        var sleeping = false
        var acceptsCommands = true
    }

    private let state = Mutex(State())
    /// The eventfd the connection thread polls; owned by this object and closed in deinit.
    let wakeDescriptor: Int32

    init() throws(AMQPError) {
        let descriptor = crmq_eventfd()
        guard descriptor >= 0 else {
            throw AMQPError(.protocolError, "could not create an eventfd (errno \(errno)); the process may be out of file descriptors")
        }
        self.wakeDescriptor = descriptor
    }

    deinit { close(self.wakeDescriptor) }

    /// Queues a command; false once the connection thread has exited.
    @discardableResult
    func post(_ command: Command) -> Bool {
        let (accepted, wake) = self.state.withLock { state -> (Bool, Bool) in
            guard state.acceptsCommands else { return (false, false) }
            state.commands.append(command)
            let wake = state.sleeping
            state.sleeping = false
            return (true, wake)
        }
        if wake { self.signal() }
        return accepted
    }

    func takeAll() -> [Command] {
        self.state.withLock { state in
            let commands = state.commands
            state.commands.removeAll(keepingCapacity: true)
            return commands
        }
    }

    /// Called by the connection thread before it sleeps; false if commands arrived meanwhile.
    func prepareToSleep() -> Bool {
        self.state.withLock { state in
            guard state.commands.isEmpty else { return false }
            state.sleeping = true
            return true
        }
    }

    /// Called after poll(); `drain` when the eventfd was signalled and must be reset.
    func didWake(drain: Bool) {
        self.state.withLock { $0.sleeping = false }
        guard drain else { return }
        var value: UInt64 = 0
        _ = read(self.wakeDescriptor, &value, 8)
    }

    /// Stops accepting commands and returns those still queued, so their callers can be answered.
    func shutDown() -> [Command] {
        self.state.withLock { state in
            state.acceptsCommands = false
            let commands = state.commands
            state.commands.removeAll()
            return commands
        }
    }

    private func signal() {
        var one: UInt64 = 1
        _ = write(self.wakeDescriptor, &one, 8)
    }
}
