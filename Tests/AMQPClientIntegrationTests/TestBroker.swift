import AMQPClient
import Foundation
import Logging
import Testing
import EntitySyncTestSupport

/// The broker the integration tests run against, described by the environment that
/// `scripts/test` sets up (or that a developer sets to use a broker of their own).
enum TestBroker {
    static let environment = ProcessInfo.processInfo.environment
    /// `ENTITY_SYNC_TEST_AMQP_URL`: the broker under test.
    static let url = environment["ENTITY_SYNC_TEST_AMQP_URL"]
    static let tlsURL = environment["ENTITY_SYNC_TEST_AMQPS_URL"]
    static let tlsDirectory = environment["ENTITY_SYNC_TEST_TLS_DIR"]
    /// A command prefix that runs rabbitmqctl against the broker (only for a private broker).
    static let control = environment["ENTITY_SYNC_TEST_BROKER_CTL"]

    static var isAvailable: Bool { url != nil }
    static var isControllable: Bool { url != nil && control != nil }

    static func configuration(_ name: String, url: String? = nil) throws -> AMQPConfiguration {
        var configuration = try AMQPConfiguration(url: url ?? self.url ?? "amqp://guest:guest@127.0.0.1:5672/",
                                                  connectionName: "test-\(name)")
        configuration.reconnectBackoff = Backoff(initial: .milliseconds(50), maximum: .seconds(1))
        configuration.operationTimeout = .seconds(20)
        return configuration
    }

    static func connect(_ name: String, configure: (inout AMQPConfiguration) -> Void = { _ in }) async throws -> AMQPConnection {
        var configuration = try self.configuration(name)
        configure(&configuration)
        return try await AMQPConnection.connect(configuration, logger: self.logger(name))
    }

    static func logger(_ name: String) -> Logger {
        var logger = Logger(label: "test.\(name)")
        logger.logLevel = environment["ENTITY_SYNC_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        return logger
    }

    static func uniqueName(_ prefix: String) -> String {
        "test_\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Runs rabbitmqctl with `arguments` against the test broker; returns its output.
    @discardableResult
    static func ctl(_ arguments: String...) throws -> String {
        try Broker.ctl(arguments: arguments)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Waits until `condition` holds, checking every 50 ms, or fails after `timeout`.
func eventually(_ what: String, timeout: Duration = .seconds(30),
                _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw TestFailure("timed out after \(timeout) waiting for: \(what)")
}

/// A fanout exchange with one durable queue bound, unique to a test, deleted afterwards.
struct Scratch {
    let exchange: String
    let queue: String

    init(_ prefix: String) {
        self.exchange = TestBroker.uniqueName(prefix)
        self.queue = self.exchange + "_q"
    }

    func declare(on connection: AMQPConnection, arguments: QueueArguments = QueueArguments(queueType: .quorum)) async throws {
        try await connection.declare(ExchangeSpec(name: self.exchange))
        try await connection.declare(QueueSpec(name: self.queue, arguments: arguments))
        try await connection.bind(BindingSpec(queue: self.queue, exchange: self.exchange))
    }

    func remove(on connection: AMQPConnection) async {
        _ = try? await connection.deleteQueue(self.queue)
        try? await connection.deleteExchange(self.exchange)
    }
}

/// Collects what a test observed from concurrent tasks.
actor Collector<Element: Hashable & Sendable> {
    private(set) var items: [Element] = []
    func add(_ item: Element) { self.items.append(item) }
    var set: Set<Element> { Set(self.items) }
    var count: Int { self.items.count }
}

extension Delivery {
    var text: String { String(decoding: self.body, as: UTF8.self) }
}

func message(_ text: String, id: String? = nil) -> OutgoingMessage {
    OutgoingMessage(body: Array(text.utf8), contentType: "text/plain", messageID: id)
}
