import AMQPClient
import Foundation

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
