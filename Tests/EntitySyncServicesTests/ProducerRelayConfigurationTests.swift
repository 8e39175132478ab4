import AMQPClient
import EntitySyncCore
import EntitySyncServices
import Testing

/// The producer's relay lease against the broker connection the producer really opens.
@Suite struct ProducerRelayConfigurationTests {
    /// Configurations as the command line and the tests build them (the URL's query can change
    /// the connection's settings, so a few are included).
    static let configurations: [ServiceConfiguration] = [
        ServiceConfiguration(listen: HostPort(host: "127.0.0.1", port: 50051), database: "data/producer.sqlite",
                             instanceName: "producer@host"),
        ServiceConfiguration(amqpURL: "amqp://user:secret@broker:5672/vhost?heartbeat=5&connection_timeout=2000",
                             listen: HostPort(host: "0.0.0.0", port: 0), database: "/tmp/p.sqlite",
                             token: "t", instanceName: "producer"),
        ServiceConfiguration(amqpURL: "amqps://user:secret@broker:5671/?verify=verify_none&frame_max=65536",
                             listen: HostPort(host: "::1", port: 50051), database: "p.sqlite",
                             topology: SyncTopology(queueType: .classic), instanceName: "producer-2"),
    ]

    @Test(arguments: Self.configurations)
    func theLeaseOutlivesThePublishTimeout(configuration: ServiceConfiguration) throws {
        // As ServiceRuntime.connect builds the producer's connection.
        var amqp = try AMQPConfiguration(url: configuration.amqpURL, connectionName: "producer:\(configuration.instanceName)")
        amqp.publishTimeout = configuration.publishTimeout
        let lease = configuration.relay.lease(publishTimeout: amqp.publishTimeout)
        #expect(lease > amqp.publishTimeout)
        #expect(configuration.relay.leaseRenewal(publishTimeout: amqp.publishTimeout) < lease)
        try configuration.relay.validate(publishTimeout: amqp.publishTimeout)
        // A second producer takes over a SIGKILLed one's relay within this.
        #expect(lease <= .seconds(15))
    }
}
