import AMQPClient
import Foundation
import Logging

/// The broker the tests run against, as scripts/test describes it in the environment.
public enum Broker {
    static let environment = ProcessInfo.processInfo.environment
    public static let url = environment["ENTITY_SYNC_TEST_AMQP_URL"]
    public static let control = environment["ENTITY_SYNC_TEST_BROKER_CTL"]
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
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", ([control] + arguments.map { "'\($0)'" }).joined(separator: " ")]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw HarnessError("rabbitmqctl \(arguments.joined(separator: " ")) failed: \(String(decoding: data, as: UTF8.self))")
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
