import AMQPClient
import Foundation

/// The private 3-node RabbitMQ cluster scripts/test starts for the scale-out tests
/// (`ENTITY_SYNC_TEST_CLUSTER_DIR`, made by scripts/rabbitmq-cluster).
public enum TestCluster {
    static let environment = ProcessInfo.processInfo.environment
    /// The folder scripts/rabbitmq-cluster made the cluster in.
    public static let directory = environment["ENTITY_SYNC_TEST_CLUSTER_DIR"]
    /// The path of scripts/rabbitmq-cluster.
    public static let script = environment["ENTITY_SYNC_TEST_CLUSTER_CTL"]
    public static let nodes = 1...3

    public static var isAvailable: Bool { directory != nil && script != nil }

    /// The nodes' AMQP URLs (default vhost), node 1 first.
    public static func urls() throws -> [AMQPURL] {
        guard let directory else { throw HarnessError("ENTITY_SYNC_TEST_CLUSTER_DIR is not set") }
        let text = try String(contentsOfFile: "\(directory)/cluster.env", encoding: .utf8)
        var settings: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { settings[parts[0]] = parts[1] }
        }
        return try self.nodes.map { node in
            guard let url = settings["AMQP_URL_\(node)"] else { throw HarnessError("cluster.env has no AMQP_URL_\(node)") }
            return try AMQPURL(url)
        }
    }

    /// The node (1-3) named `erlangName` (as `list_queues leader` prints it).
    public static func node(named erlangName: String) throws -> Int {
        guard let directory else { throw HarnessError("ENTITY_SYNC_TEST_CLUSTER_DIR is not set") }
        let text = try String(contentsOfFile: "\(directory)/cluster.env", encoding: .utf8)
        for node in self.nodes where text.contains("NODE_\(node)=\(erlangName)\n") { return node }
        throw HarnessError("no node of the test cluster is called \(erlangName)")
    }

    /// Runs rabbitmqctl with `arguments` against `node`.
    @discardableResult
    public static func ctl(node: Int, _ arguments: String...) throws -> String {
        try self.ctl(node: node, arguments)
    }

    @discardableResult
    public static func ctl(node: Int, _ arguments: [String]) throws -> String {
        try self.run(["ctl", "\(node)"] + arguments)
    }

    /// Stops `node` cleanly; its clients get connection refused.
    public static func stop(node: Int) throws { try self.run(["stop-node", "\(node)"]) }

    /// SIGKILLs `node`'s Erlang VM.
    public static func kill(node: Int) throws { try self.run(["kill-node", "\(node)"]) }

    /// Starts `node` again with its data; it rejoins the cluster.
    public static func start(node: Int) throws { try self.run(["start-node", "\(node)"]) }

    @discardableResult
    private static func run(_ arguments: [String]) throws -> String {
        guard let script, let directory else { throw HarnessError("the test cluster is not configured (scripts/test starts one)") }
        let command = arguments.first ?? ""
        let rest = arguments.dropFirst().map { "'\($0)'" }
        return try ChildProcess.shell(([script, command, "'\(directory)'"] + rest).joined(separator: " "))
    }
}
