import AMQPClient
import Foundation
import Logging

/// The broker the tests run against, as scripts/test describes it in the environment (or as a
/// developer sets it to use a broker of their own).
public enum Broker {
    static let environment = ProcessInfo.processInfo.environment
    /// `ENTITY_SYNC_TEST_AMQP_URL`: the broker under test.
    public static let url = environment["ENTITY_SYNC_TEST_AMQP_URL"]
    /// The broker's TLS listener and the folder of its certificates, for the TLS test.
    public static let tlsURL = environment["ENTITY_SYNC_TEST_AMQPS_URL"]
    public static let tlsDirectory = environment["ENTITY_SYNC_TEST_TLS_DIR"]
    /// A command prefix that runs rabbitmqctl against the broker.
    public static let control = environment["ENTITY_SYNC_TEST_BROKER_CTL"]
    /// Starts the private broker again with its data (after a test killed it).
    public static let startCommand = environment["ENTITY_SYNC_TEST_BROKER_START"]

    /// A broker is named: enough for tests that only publish and consume.
    public static var isConfigured: Bool { url != nil }
    /// A broker is named and rabbitmqctl reaches it: sync tests need their own vhost each
    /// (topology names are fixed), others add users or close connections.
    public static var isAvailable: Bool { url != nil && control != nil }

    /// A client configuration for the test broker (or `url`), reconnecting quickly.
    public static func configuration(_ name: String, url: String? = nil) throws -> AMQPConfiguration {
        var configuration = try AMQPConfiguration(url: url ?? self.url ?? "amqp://guest:guest@127.0.0.1:5672/",
                                                  connectionName: "test-\(name)")
        configuration.reconnectBackoff = Backoff(initial: .milliseconds(50), maximum: .seconds(1))
        configuration.operationTimeout = .seconds(20)
        return configuration
    }

    /// A connection to the test broker's default vhost, after `configure` adjusted its configuration.
    public static func connect(_ name: String, configure: (inout AMQPConfiguration) -> Void = { _ in }) async throws -> AMQPConnection {
        var configuration = try self.configuration(name)
        configure(&configuration)
        return try await AMQPConnection.connect(configuration, logger: self.logger("test.\(name)"))
    }

    /// A name no other test uses, for a queue, exchange or user.
    public static func uniqueName(_ prefix: String) -> String {
        "test_\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
    }

    @discardableResult
    public static func ctl(_ arguments: String...) throws -> String {
        try self.ctl(arguments: arguments)
    }

    /// Runs rabbitmqctl with `arguments` against the test broker; returns its output.
    @discardableResult
    public static func ctl(arguments: [String]) throws -> String {
        guard let control else { throw HarnessError("ENTITY_SYNC_TEST_BROKER_CTL is not set") }
        return try ChildProcess.shell(([control] + arguments.map { "'\($0)'" }).joined(separator: " "))
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
        try ChildProcess.shell(startCommand)
    }

    public static func logger(_ label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = environment["ENTITY_SYNC_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        return logger
    }
}
