import AMQPClient
import Foundation

/// A private vhost and data folder for one test; `tearDown` removes both.
public final class TestVirtualHost: Sendable {
    public let name: String
    public let url: String
    public let directory: String

    /// On the cluster, not the single broker: `url` then lists every node.
    public let onCluster: Bool

    public init(_ prefix: String, onCluster: Bool = false) throws {
        let suffix = UUID().uuidString.prefix(8).lowercased()
        let name = "test_\(prefix)_\(suffix)"
        self.name = name
        self.onCluster = onCluster
        let bases = onCluster ? try TestCluster.urls() : [try AMQPURL(Broker.url ?? "")]
        self.url = bases.map { "amqp://\($0.user):\($0.password)@\($0.host):\($0.port)/\(name)" }.joined(separator: ",")
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("entitysync-\(self.name)").path
        try self.ctl("add_vhost", self.name)
        try self.ctl("set_permissions", "-p", self.name, bases[0].user, ".*", ".*", ".*")
    }

    public func tearDown() {
        _ = try? self.ctl("delete_vhost", self.name)
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    /// rabbitmqctl against the single broker, or against the first running node of the cluster.
    @discardableResult
    public func ctl(_ arguments: String...) throws -> String {
        guard self.onCluster else { return try Broker.ctl(arguments: arguments) }
        var failure: (any Error)?
        for node in TestCluster.nodes {
            do {
                return try TestCluster.ctl(node: node, arguments)
            } catch {
                failure = error
            }
        }
        throw failure ?? HarnessError("no cluster node answered")
    }

    public func path(_ file: String) -> String { "\(self.directory)/\(file).sqlite" }

    public func connect(_ name: String) async throws -> AMQPConnection {
        var configuration = try AMQPConfiguration(url: self.url, connectionName: "\(self.name)-\(name)")
        configuration.reconnectBackoff = Backoff(initial: .milliseconds(50), maximum: .seconds(1))
        return try await AMQPConnection.connect(configuration, logger: Broker.logger(name))
    }
}
