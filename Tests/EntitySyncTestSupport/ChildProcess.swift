import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The one way tests start a process: spawned and reaped by hand, either in the background with
/// its output appended to a log file, or run to completion with its output captured.
///
/// Foundation's `Process` sometimes never noticed a child's exit in the chaos tests (the child
/// stayed a zombie, `isRunning` stayed true), which turned a clean shutdown into a false
/// "ignored SIGTERM"; after a command that leaves daemons behind (the broker's start) it was seen
/// to leave `waitUntilExit` blocked for good. Here `waitpid` is asked directly.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    private let exit = Mutex<Int32?>(nil)

    /// Starts `executable` with `arguments` and `environment` (by default this process's) in
    /// `directory` (by default this process's), appending its stdout and stderr to `log`.
    public init(_ executable: String, _ arguments: [String],
                environment: [String: String] = ProcessInfo.processInfo.environment,
                directory: String? = nil, log: String) throws {
        let descriptor = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw HarnessError("cannot open \(log): errno \(errno)") }
        defer { close(descriptor) }
        self.pid = try Self.spawn(executable, arguments, environment: environment, directory: directory, output: descriptor)
    }

    /// What a process run to completion left: how it ended and everything it wrote.
    public struct Completion: Sendable {
        /// The raw wait status.
        public let status: Int32
        /// Its stdout and stderr, interleaved as written.
        public let output: String

        /// The exit code, or nil when a signal ended it.
        public var exitCode: Int32? { ChildProcess.exitCode(self.status) }
        /// True when it exited by itself with status 0.
        public var succeeded: Bool { self.exitCode == 0 }
        /// How it ended, for messages: "exit 0" or "signal 9".
        public var termination: String { ChildProcess.termination(self.status) }
    }

    /// Runs `executable` to completion, capturing its stdout and stderr. Blocks the calling
    /// thread until the child exits and every process holding its output has closed it.
    public static func run(_ executable: String, _ arguments: [String],
                           environment: [String: String] = ProcessInfo.processInfo.environment,
                           directory: String? = nil) throws -> Completion {
        var pipe: [Int32] = [0, 0]
        guard Glibc.pipe(&pipe) == 0 else { throw HarnessError("pipe() failed: errno \(errno)") }
        let pid: pid_t
        do {
            pid = try self.spawn(executable, arguments, environment: environment, directory: directory, output: pipe[1])
        } catch {
            close(pipe[0])
            close(pipe[1])
            throw error
        }
        // Only the child holds the write end now, so reading ends when it (and anything it
        // left running with its output) is done.
        close(pipe[1])
        let data = FileHandle(fileDescriptor: pipe[0], closeOnDealloc: true).readDataToEndOfFile()
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        return Completion(status: status, output: String(decoding: data, as: UTF8.self))
    }

    /// Runs `command` with /bin/sh to completion and returns its output; throws with the output
    /// if it fails.
    @discardableResult
    public static func shell(_ command: String) throws -> String {
        let completion = try self.run("/bin/sh", ["-c", command])
        guard completion.succeeded else { throw HarnessError("\(command) failed (\(completion.termination)): \(completion.output)") }
        return completion.output
    }

    /// Spawns the child with stdin from /dev/null and stdout and stderr on `output`.
    private static func spawn(_ executable: String, _ arguments: [String], environment: [String: String],
                              directory: String?, output: Int32) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output, 1)
        posix_spawn_file_actions_adddup2(&actions, output, 2)
        // Nothing else of the test process leaks into the child (a broker started from here once
        // inherited a gRPC client socket and held a service's graceful shutdown open for good;
        // a leaked pipe end would keep `run` reading for ever).
        markDescriptorsCloseOnExec()
        // glibc's posix_spawn_file_actions_addchdir_np is not visible from Swift, so a child that
        // must start elsewhere goes through sh, which changes directory and execs it.
        let (program, arguments) = directory.map {
            ("/bin/sh", ["-c", "cd \"$0\" && exec \"$@\"", $0, executable] + arguments)
        } ?? (executable, arguments)
        var argv: [UnsafeMutablePointer<CChar>?] = ([program] + arguments).map { strdup($0) } + [nil]
        var envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        // Every signal at its default and none blocked, as in a shell: the test process ignores
        // SIGPIPE (SwiftNIO), and a child that inherited that, or a blocked SIGINT, would not
        // stop the way the tests expect.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        sigdelset(&all, SIGKILL)
        sigdelset(&all, SIGSTOP)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        var pid: pid_t = 0
        let result = posix_spawn(&pid, program, &actions, &attributes, &argv, &envp)
        guard result == 0 else { throw HarnessError("could not start \(executable): errno \(result)") }
        return pid
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

    /// The exit code in a raw wait status: the low 7 bits are the terminating signal (0 when it
    /// exited by itself), the next 8 the code.
    static func exitCode(_ status: Int32) -> Int32? {
        status & 0x7F == 0 ? (status >> 8) & 0xFF : nil
    }

    public var isRunning: Bool { self.status == nil }

    /// The exit code once it exited by itself; nil while running or when a signal ended it.
    public var exitCode: Int32? { self.status.flatMap(Self.exitCode) }

    /// True when the child exited by itself with status 0.
    public var exitedCleanly: Bool { self.exitCode == 0 }

    /// How it ended, for messages: "exit 0", "signal 9", or "running".
    public var termination: String { self.status.map(Self.termination) ?? "running" }

    static func termination(_ status: Int32) -> String {
        Self.exitCode(status).map { "exit \($0)" } ?? "signal \(status & 0x7F)"
    }

    /// Sends `signal` (SIGTERM, SIGINT, SIGKILL, SIGSTOP…) unless the child has already exited.
    public func signal(_ signal: Int32) {
        if self.isRunning { kill(self.pid, signal) }
    }

    /// Waits up to `timeout` for the child to exit; throws if it is still running then.
    public func waitForExit(_ what: String, timeout: Duration) async throws {
        try await eventually(what, timeout: timeout) { !self.isRunning }
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
