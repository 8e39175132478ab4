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

    /// A header nested thousands of levels deep (which fits in one frame) decodes with its
    /// nesting cut at the limit, not by recursing as deep as the publisher likes.
    @Test func nestingBeyondTheLimitDecodesAsEmpty() {
        func nested(_ depth: Int, array: Bool) -> AMQPFieldValue {
            var value: AMQPFieldValue = "leaf"
            for level in 0..<depth { value = array && level.isMultiple(of: 2) ? .array([value]) : .table(["k": value]) }
            return value
        }
        func depth(_ value: AMQPFieldValue?) -> Int {
            switch value {
            case .table(let table)?: return table.isEmpty ? 1 : 1 + depth(table["k"])
            case .array(let array)?: return array.isEmpty ? 1 : 1 + depth(array.first)
            default: return 0
            }
        }
        let arena = CArena()
        for array in [false, true] {
            let shallow: AMQPTable = ["h": nested(FieldTableDecoder.depthLimit - 1, array: array)]
            #expect(FieldTableDecoder.decode(arena.table(shallow)) == shallow)
            let decoded = FieldTableDecoder.decode(arena.table(["h": nested(5000, array: array)]))
            #expect(depth(decoded["h"]) == FieldTableDecoder.depthLimit)
        }
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
