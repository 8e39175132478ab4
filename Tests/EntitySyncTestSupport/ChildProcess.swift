import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A child process spawned and reaped by hand, its output appended to a log file.
///
/// Foundation's `Process` sometimes never noticed a child's exit in the chaos tests (the child
/// stayed a zombie, `isRunning` stayed true), which turned a clean shutdown into a false
/// "ignored SIGTERM". Here `waitpid` is asked directly.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    private let exit = Mutex<Int32?>(nil)

    /// Starts `executable` with `arguments` and `environment`, appending its stdout and stderr to `log`.
    public init(_ executable: String, _ arguments: [String], environment: [String: String], log: String) throws {
        let descriptor = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw HarnessError("cannot open \(log): errno \(errno)") }
        defer { close(descriptor) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, descriptor, 1)
        posix_spawn_file_actions_adddup2(&actions, descriptor, 2)
        // Nothing else of the test process leaks into the child (a broker started from here once
        // inherited a gRPC client socket and held a service's graceful shutdown open for good).
        markDescriptorsCloseOnExec()
        var argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        var envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, nil, &argv, &envp)
        guard result == 0 else { throw HarnessError("could not start \(executable): errno \(result)") }
        self.pid = pid
    }

    /// The raw wait status once the child has exited and been reaped, else nil.
    private var status: Int32? {
        self.exit.withLock { exit in
            if exit == nil {
                var status: Int32 = 0
                if waitpid(self.pid, &status, WNOHANG) == self.pid { exit = status }
            }
            return exit
        }
    }

    public var isRunning: Bool { self.status == nil }

    /// True when the child exited by itself with status 0.
    public var exitedCleanly: Bool { self.status.map { $0 & 0x7F == 0 && ($0 >> 8) & 0xFF == 0 } ?? false }

    /// How it ended, for messages: "exit 0", "signal 9", or "running".
    public var termination: String {
        guard let status = self.status else { return "running" }
        return status & 0x7F == 0 ? "exit \((status >> 8) & 0xFF)" : "signal \(status & 0x7F)"
    }

    public func signal(_ signal: Int32) {
        if self.isRunning { kill(self.pid, signal) }
    }
}

/// Sets close-on-exec on every descriptor of this process above stderr, so a child starts with
/// none of them (SwiftNIO's sockets do not set it).
func markDescriptorsCloseOnExec() {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
    for descriptor in entries.compactMap(Int32.init) where descriptor > 2 {
        let flags = fcntl(descriptor, F_GETFD)
        if flags >= 0 { _ = fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC) }
    }
}
