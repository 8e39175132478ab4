import AMQPClient
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging

/// The broker the tests run against, as scripts/test describes it in the environment.
public enum Broker {
    static let environment = ProcessInfo.processInfo.environment
    public static let url = environment["ENTITY_SYNC_TEST_AMQP_URL"]
    public static let control = environment["ENTITY_SYNC_TEST_BROKER_CTL"]
    /// Starts the private broker again with its data (after a test killed it).
    public static let startCommand = environment["ENTITY_SYNC_TEST_BROKER_START"]
    /// Sync tests need their own vhost each (topology names are fixed), so rabbitmqctl too.
    public static var isAvailable: Bool { url != nil && control != nil }

    @discardableResult
    public static func ctl(_ arguments: String...) throws -> String {
        try self.ctl(arguments: arguments)
    }

    /// Runs rabbitmqctl with `arguments` against the test broker; returns its output.
    @discardableResult
    public static func ctl(arguments: [String]) throws -> String {
        guard let control else { throw HarnessError("ENTITY_SYNC_TEST_BROKER_CTL is not set") }
        return try self.shell(([control] + arguments.map { "'\($0)'" }).joined(separator: " "))
    }

    /// The broker's OS process id, for signals.
    public static func pid() throws -> Int32 {
        let text = try self.ctl("eval", "os:getpid().").trimmingCharacters(in: CharacterSet(charactersIn: "\"\n "))
        guard let pid = Int32(text) else { throw HarnessError("no broker pid in '\(text)'") }
        return pid
    }

    /// Starts the private broker again (same node, ports and data) and waits until it is up.
    public static func start() throws {
        guard let startCommand else { throw HarnessError("ENTITY_SYNC_TEST_BROKER_START is not set") }
        try self.shell(startCommand)
    }

    /// Runs `command` with /bin/sh and returns its output. Spawned and reaped by hand: after a
    /// command that leaves daemons behind (the broker's start), Foundation's `Process` was seen
    /// never to notice its exit, leaving a zombie and `waitUntilExit` blocked for good.
    @discardableResult
    public static func shell(_ command: String) throws -> String {
        var pipe: [Int32] = [0, 0]
        guard Glibc.pipe(&pipe) == 0 else { throw HarnessError("pipe() failed: errno \(errno)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, pipe[1], 2)
        posix_spawn_file_actions_addclose(&actions, pipe[0])
        posix_spawn_file_actions_addclose(&actions, pipe[1])
        // Nothing else of the test process leaks into the child (a broker started from here once
        // inherited a gRPC client socket and held a service's graceful shutdown open for good).
        markDescriptorsCloseOnExec()
        var pid: pid_t = 0
        let arguments = ["/bin/sh", "-c", command]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        let spawned = posix_spawn(&pid, "/bin/sh", &actions, nil, &argv, environ)
        close(pipe[1])
        guard spawned == 0 else {
            close(pipe[0])
            throw HarnessError("could not run /bin/sh: errno \(spawned)")
        }
        let output = FileHandle(fileDescriptor: pipe[0], closeOnDealloc: true)
        let data = output.readDataToEndOfFile()
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        // Exited normally with 0: the low 7 bits are the terminating signal, the next 8 the code.
        guard status & 0x7F == 0, (status >> 8) & 0xFF == 0 else {
            throw HarnessError("\(command) failed: \(String(decoding: data, as: UTF8.self))")
        }
        return String(decoding: data, as: UTF8.self)
    }

    public static func logger(_ label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = environment["ENTITY_SYNC_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        return logger
    }
}

public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A private vhost and data folder for one test; `tearDown` removes both.
public final class TestVirtualHost: Sendable {
    public let name: String
    public let url: String
    public let directory: String

    public init(_ prefix: String) throws {
        let suffix = UUID().uuidString.prefix(8).lowercased()
        self.name = "test_\(prefix)_\(suffix)"
        let base = try AMQPURL(Broker.url ?? "")
        self.url = "amqp://\(base.user):\(base.password)@\(base.host):\(base.port)/\(self.name)"
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("entitysync-\(self.name)").path
        try Broker.ctl("add_vhost", self.name)
        try Broker.ctl("set_permissions", "-p", self.name, base.user, ".*", ".*", ".*")
    }

    public func tearDown() {
        _ = try? Broker.ctl("delete_vhost", self.name)
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    public func path(_ file: String) -> String { "\(self.directory)/\(file).sqlite" }

    public func connect(_ name: String) async throws -> AMQPConnection {
        var configuration = try AMQPConfiguration(url: self.url, connectionName: "\(self.name)-\(name)")
        configuration.reconnectBackoff = Backoff(initial: .milliseconds(50), maximum: .seconds(1))
        return try await AMQPConnection.connect(configuration, logger: Broker.logger(name))
    }
}

/// Waits until `condition` holds, checking every 50 ms, or throws after `timeout`.
public func eventually(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw HarnessError("timed out after \(timeout) waiting for: \(what)")
}
