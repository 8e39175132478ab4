@testable import AMQPClient
import Testing

@Suite struct FieldTableTests {
    @Test func roundTripsThroughCRepresentation() {
        let table: AMQPTable = [
            "bool": true, "int": -42, "double": .double(1.5), "string": "héllo", "bytes": .bytes([0, 255]),
            "timestamp": .timestamp(1_700_000_000), "array": .array(["a", 1, .table(["k": "v"])]),
            "nested": .table(["deeper": .table(["x": false])]), "void": .void, "empty": .table([:]),
        ]
        let arena = CArena()
        #expect(FieldTableDecoder.decode(arena.table(table)) == table)
    }

    @Test func queueArgumentsMapToRabbitMQNames() {
        let arguments = QueueArguments(queueType: .quorum, deadLetterExchange: "dlx", deadLetterRoutingKey: "q.dlq",
                                       deliveryLimit: 5, overflow: .rejectPublish, deadLetterStrategy: .atLeastOnce,
                                       messageTTL: 1000, extra: ["x-custom": "y"])
        #expect(arguments.table == [
            "x-queue-type": "quorum", "x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "q.dlq",
            "x-delivery-limit": 5, "x-overflow": "reject-publish", "x-dead-letter-strategy": "at-least-once",
            "x-message-ttl": 1000, "x-custom": "y",
        ])
        #expect(QueueArguments().table.isEmpty)
    }

    @Test func propertiesRoundTrip() {
        let properties = AMQPProperties(contentType: "application/x-protobuf", contentEncoding: "gzip", messageID: "m-1",
                                        correlationID: "c", type: "user", appID: "producer", timestamp: 1_700_000_000, expiration: "1500",
                                        deliveryMode: 2, headers: ["x-delivery-count": 3])
        let arena = CArena()
        #expect(AMQPProperties(properties.cValue(arena: arena)) == properties)
        #expect(AMQPProperties(AMQPProperties().cValue(arena: arena)) == AMQPProperties())
    }
}
