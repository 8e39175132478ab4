import AMQPClient
import EntitySyncTestSupport

/// A fanout exchange with one durable queue bound, unique to a test, deleted afterwards.
struct Scratch {
    let exchange: String
    let queue: String

    init(_ prefix: String) {
        self.exchange = Broker.uniqueName(prefix)
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
