import AMQPClient
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncTestSupport
import Foundation
import GRPCCore
import Testing

/// `ListDeadLetters` and `RedriveDeadLetters` against a running system: dead letters are read in
/// place, and a re-drive applies what is newer, drops what is stale and puts back what fails.
@Suite(.serialized) struct DeadLetterTests {
    static func change(_ id: String, version: UInt64, name: String) throws -> OutgoingMessage {
        try ChangeCodec.message(for: Fixtures.userChange(id, version: version, name: name, messageID: "dead:\(id):\(version)",
                                                         producer: "dead-letter-test"))
    }

    @Test func listShowsDeadLettersInPlaceAndRedriveReportsAppliedStaleAndFailed() async throws {
        let system = try await RunningSystem.start("dlq")
        let userRPC = try await system.userRPC[0].address.port()
        let producer = try await system.producer.address.port()
        let metadata = system.authorized

        // "kept" exists at version 2, so a dead-lettered version 1 of it is stale.
        try await system.withClient(producer) { client in
            let admin = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            _ = try await admin.createUser(userRequest("kept", name: "Kept"), metadata: metadata)
            var update = Entitysync_V1_UpdateUserRequest()
            update.user = userRequest("kept", name: "Kept again").user
            _ = try await admin.updateUser(update, metadata: metadata)
        }
        try await system.withClient(userRPC) { client in
            _ = try await Entitysync_V1_SyncInfo.Client(wrapping: client).waitForVersion(waitRequest(.user, "kept", 2))
        }

        let queue = SyncTopology.deadLetterQueue(forQueue: SyncTopology.queue(for: .user, group: "consumer_user_rpc"))
        let connection = try await system.host.connect("dlq-injector")
        var failedOnce = try Self.change("revived", version: 1, name: "Revived")
        failedOnce.properties.headers[ConsumerRunner.reasonHeader] = .string("failed 5 times; last error: disk I/O error")
        var garbage = OutgoingMessage(body: Array("not protobuf".utf8), contentType: "text/plain", messageID: "garbage")
        garbage.properties.headers[ConsumerRunner.reasonHeader] = .string("unsupported content type 'text/plain'")
        for message in [failedOnce, try Self.change("kept", version: 1, name: "Old"), garbage] {
            try await connection.publish(message, exchange: "", routingKey: queue)
        }
        await connection.close()

        let listed = try await system.withClient(userRPC) { client in
            var request = Entitysync_V1_ListDeadLettersRequest()
            request.entityType = .user
            return try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(request, metadata: metadata)
        }
        #expect(listed.total == 3)
        #expect(listed.deadLetters.map(\.entityID) == ["revived", "kept", ""])
        #expect(listed.deadLetters.map(\.version) == [1, 1, 0])
        #expect(listed.deadLetters[0].reason.contains("disk I/O error"))
        #expect(listed.deadLetters[2].contentType == "text/plain")
        #expect(listed.deadLetters.allSatisfy { $0.queue == queue })

        // Listing leaves them where they were, in order.
        let again = try await system.withClient(userRPC) { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(Entitysync_V1_ListDeadLettersRequest(),
                                                                                     metadata: metadata)
        }
        #expect(again.total == 3)
        #expect(again.deadLetters.map(\.messageID).sorted() == listed.deadLetters.map(\.messageID).sorted())

        // Listing takes messages off the queue for a moment: without the token it is refused too.
        let listRefused = await statusCode {
            _ = try await system.withClient(userRPC) { client in
                try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(Entitysync_V1_ListDeadLettersRequest())
            }
        }
        #expect(listRefused == .unauthenticated)

        // A re-drive is a mutation: without the token it is refused and nothing moves.
        let refused = await statusCode {
            _ = try await system.withClient(userRPC) { client in
                try await Entitysync_V1_SyncInfo.Client(wrapping: client).redriveDeadLetters(Entitysync_V1_RedriveDeadLettersRequest())
            }
        }
        #expect(refused == .unauthenticated)

        let report = try await system.withClient(userRPC) { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).redriveDeadLetters(
                Entitysync_V1_RedriveDeadLettersRequest(), metadata: metadata)
        }
        #expect(report.applied == 1)
        #expect(report.stale == 1)
        #expect(report.failed == 1)
        #expect(report.failures.first?.messageID == "garbage")
        #expect(report.failures.first?.reason.contains("content type") == true)

        try await system.withClient(userRPC) { client in
            let query = Entitysync_V1_UserQuery.Client(wrapping: client)
            var get = Entitysync_V1_GetRequest()
            get.id = "revived"
            #expect(try await query.getUser(get).user.name == "Revived")
            get.id = "kept"
            let kept = try await query.getUser(get).user
            #expect(kept.version == 2 && kept.name == "Kept again", "a re-drive must never roll an entity back")
        }
        let remaining = try await system.withClient(userRPC) { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(Entitysync_V1_ListDeadLettersRequest(),
                                                                                     metadata: metadata)
        }
        #expect(remaining.total == 1)
        #expect(remaining.deadLetters.first?.messageID == "garbage")
        try await system.stop()
    }

    /// Issue 12 item 7: a list with a limit above the DLQ consumer's prefetch (256) waited
    /// forever for messages the broker would never send, holding 256 unacked.
    @Test func listingMoreThanAPrefetchAnswersAndPutsEverythingBack() async throws {
        let system = try await RunningSystem.start("dlqbig")
        let userRPC = try await system.userRPC[0].address.port()
        let queue = SyncTopology.deadLetterQueue(forQueue: SyncTopology.queue(for: .user, group: "consumer_user_rpc"))
        let connection = try await system.host.connect("dlq-filler")
        let batch = (0..<300).map { index in
            PublishItem(OutgoingMessage(body: [0xFF], contentType: "text/plain", messageID: "dead-\(index)"),
                        exchange: "", routingKey: queue)
        }
        for result in await connection.publish(batch) { try result.get() }

        var options = CallOptions.defaults
        options.timeout = .seconds(60)
        var request = Entitysync_V1_ListDeadLettersRequest()
        request.entityType = .user
        request.limit = 300
        let sent = request
        let callOptions = options
        let listed = try await system.withClient(userRPC) { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(sent, metadata: system.authorized,
                                                                                      options: callOptions)
        }
        #expect(listed.total == 300)
        #expect(listed.deadLetters.map(\.messageID) == (0..<300).map { "dead-\($0)" })
        try await eventually("every dead letter is back and the list's consumer is gone") {
            let status = try await connection.queueStatus(queue)
            return status.messageCount == 300 && status.consumerCount == 0
        }
        // A second list sees the same. (Not necessarily in the same order: a quorum queue serves a
        // burst of returned messages back mostly, not strictly, in the order they were returned.)
        let again = try await system.withClient(userRPC) { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(sent, metadata: system.authorized,
                                                                                      options: callOptions)
        }
        #expect(again.deadLetters.map(\.messageID).sorted() == listed.deadLetters.map(\.messageID).sorted())
        await connection.close()
        try await system.stop()
    }
}
