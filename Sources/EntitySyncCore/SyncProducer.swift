import AMQPModel
import Logging

/// The producer side of a process: declares the whole topology (every exchange and every
/// group's queues) before anything is published, so groups that start later still find their
/// history waiting, then relays the outbox until cancelled.
public struct SyncProducer: Sendable {
    public let topology: SyncTopology
    public let relay: OutboxRelay
    private let broker: any MessageBroker

    /// A producer named `name` in logs; its relay's lease owner is that name made unique to this
    /// process (see `OutboxRelay.uniqueOwner(instanceName:)`).
    public init(topology: SyncTopology, store: any SourceStore, broker: any MessageBroker, name: String,
                relayConfiguration: OutboxRelay.Configuration = OutboxRelay.Configuration(), logger: Logger) {
        self.topology = topology
        self.broker = broker
        self.relay = OutboxRelay(store: store, broker: broker, owner: OutboxRelay.uniqueOwner(instanceName: name),
                                 configuration: relayConfiguration, logger: logger)
    }

    /// Checks the relay's settings and declares the topology; throws (for example a lease
    /// shorter than the publish timeout, or a queue argument mismatch naming the queue and the
    /// argument) before anything is published.
    public func declareTopology() async throws {
        try self.relay.validate()
        try self.topology.validate()
        try await self.topology.prepare(forGroup: nil, declare: true, on: self.broker)
    }

    /// Declares the topology, then relays the outbox until the task is cancelled.
    public func run() async throws {
        try await self.declareTopology()
        await self.relay.run()
    }
}
