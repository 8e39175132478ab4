import AMQPClient
import EntitySyncTestSupport
import Foundation
import Testing

/// The client against the private 3-node cluster: every node's URL given, in order.
@Suite(.serialized, .enabled(if: TestCluster.isAvailable, "needs the test cluster (scripts/test starts one)"))
struct ClusterTests {
    /// A service starting while the first node is down connects to the second, and a quorum
    /// queue replicated over the cluster takes and gives back a confirmed message.
    @Test func theFirstNodeDownTheNextIsUsed() async throws {
        let urls = try TestCluster.urls()
        try TestCluster.stop(node: 1)
        do {
            var configuration = try AMQPConfiguration(urls: urls, connectionName: "test-cluster-first-down")
            configuration.reconnectBackoff = Backoff(initial: .milliseconds(50), maximum: .seconds(1))
            let connection = try await AMQPConnection.connect(configuration, logger: Broker.logger("cluster"))
            let queue = Broker.uniqueName("cluster")
            _ = try await connection.declare(QueueSpec(name: queue, arguments: QueueArguments(queueType: .quorum)))
            try await connection.publish(OutgoingMessage(body: Array("replicated".utf8)), exchange: "", routingKey: queue,
                                          mandatory: true)
            #expect(try await connection.queueStatus(queue).messageCount == 1)
            _ = try await connection.deleteQueue(queue, ifEmpty: false)
            await connection.close()
        } catch {
            try? TestCluster.start(node: 1)
            throw error
        }
        try TestCluster.start(node: 1)
    }

    /// Every node down: `connect` fails at once and names each address with its reason.
    @Test func noNodeAnsweringIsAnErrorNamingEachOne() async throws {
        let urls = try TestCluster.urls().map { url in
            var closed = url
            closed.port = (try? freePort()) ?? 1
            return closed
        }
        do {
            _ = try await AMQPConnection.connect(try AMQPConfiguration(urls: urls), logger: Broker.logger("cluster"))
            Issue.record("connected to closed ports")
        } catch let error as AMQPError {
            #expect(error.code == .connectionRefused, "\(error)")
            for url in urls { #expect(error.message.contains("\(url.host):\(url.port)"), "\(error.message)") }
        }
    }
}
