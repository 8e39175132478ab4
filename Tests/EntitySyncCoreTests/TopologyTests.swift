import AMQPModel
import EntitySyncCore
import Testing

@Suite struct TopologyTests {
    @Test func defaultNamesAreExactlyTheArticles() {
        let topology = SyncTopology()
        let declarations = topology.declarations(forGroup: nil)
        #expect(Set(declarations.exchanges.map(\.name)) == ["exchange_user", "exchange_group", "entitysync.dlx",
                                                             "entitysync.forward.consumer_user_rpc", "entitysync.forward.consumer_org_rpc"])
        let mainQueues = declarations.bindings.filter { !$0.exchange.hasPrefix("entitysync.") }
        #expect(Set(mainQueues.map(\.queue)) == [
            "exchange_user_consumer_user_rpc", "exchange_user_consumer_org_rpc",
            "exchange_group_consumer_user_rpc", "exchange_group_consumer_org_rpc",
        ])
        for binding in mainQueues {
            #expect(binding.queue.hasPrefix(binding.exchange + "_"))
        }
        #expect(declarations.exchanges.first { $0.name == "exchange_user" }?.kind == .fanout)
        #expect(declarations.exchanges.allSatisfy { $0.durable })
        #expect(declarations.queues.allSatisfy { $0.durable })
    }

    @Test func everyQueueHasADeadLetterQueueAndARetryQueue() {
        let declarations = SyncTopology().declarations(forGroup: nil)
        let queue = declarations.queues.first { $0.name == "exchange_user_consumer_org_rpc" }
        #expect(queue?.arguments.queueType == .quorum)
        #expect(queue?.arguments.deadLetterExchange == "entitysync.dlx")
        #expect(queue?.arguments.deadLetterRoutingKey == "exchange_user_consumer_org_rpc.dlq")
        #expect(queue?.arguments.deliveryLimit == 5)
        #expect(declarations.queues.contains { $0.name == "exchange_user_consumer_org_rpc.dlq" })
        let retry = declarations.queues.first { $0.name == "exchange_user_consumer_org_rpc.retry" }
        #expect(retry?.arguments.deadLetterExchange == "")
        #expect(retry?.arguments.deadLetterRoutingKey == "exchange_user_consumer_org_rpc")
        // Both broker-side moves are at-least-once, which needs reject-publish overflow on the source.
        for moving in [queue, retry] {
            #expect(moving?.arguments.deadLetterStrategy == .atLeastOnce)
            #expect(moving?.arguments.overflow == .rejectPublish)
        }
        #expect(retry?.arguments.queueType == .quorum)
        // Listing returns messages, which counts as deliveries: the limit must be out of reach.
        let dlq = declarations.queues.first { $0.name == "exchange_user_consumer_org_rpc.dlq" }
        #expect(dlq?.arguments.deliveryLimit == SyncTopology.deadLetterQueueDeliveryLimit)
        #expect(dlq?.arguments.table["x-delivery-limit"] == .int(1_000_000_000))
        #expect(declarations.bindings.contains(BindingSpec(queue: "exchange_user_consumer_org_rpc.dlq",
                                                           exchange: "entitysync.dlx",
                                                           routingKey: "exchange_user_consumer_org_rpc.dlq")))
    }

    @Test func classicQueuesHaveNoDeliveryLimit() {
        let declarations = SyncTopology(queueType: .classic).declarations(forGroup: nil)
        let main = declarations.queues.first { $0.name == "exchange_group_consumer_user_rpc" }
        #expect(main?.arguments.queueType == .classic)
        #expect(main?.arguments.deliveryLimit == nil)
        // Classic queues cannot dead-letter at-least-once; they must not claim to.
        #expect(main?.arguments.deadLetterStrategy == nil)
    }

    @Test func aGroupDeclaresOnlyItsOwnQueuesWithTheSameArguments() {
        let topology = SyncTopology()
        let all = topology.declarations(forGroup: nil)
        let org = topology.declarations(forGroup: "consumer_org_rpc")
        #expect(org.queues.allSatisfy { $0.name.contains("consumer_org_rpc") })
        #expect(org.queues.count == 6)
        for queue in org.queues { #expect(all.queues.contains(queue)) }
        #expect(topology.queues(forGroup: "consumer_user_rpc").map(\.queue)
                == ["exchange_group_consumer_user_rpc", "exchange_user_consumer_user_rpc"])
    }

    @Test func serviceNamesMapToGroups() {
        #expect(SyncTopology.groupName(forService: "user-rpc") == "consumer_user_rpc")
        #expect(SyncTopology.groupName(forService: "org-rpc") == "consumer_org_rpc")
    }

    @Test func invalidGroupNamesAreRejected() throws {
        #expect(throws: SyncError.self) { try SyncTopology(routes: [.user: ["Bad-Name"]]).validate() }
        #expect(throws: SyncError.self) { try SyncTopology(routes: [.user: [""]]).validate() }
        try SyncTopology().validate()
    }
}

@Suite struct VersionRuleTests {
    @Test(arguments: [
        (UInt64(1), UInt64?.none, VersionRule.Decision.apply),
        (2, 1, .apply),
        (1, 1, .stale),
        (1, 2, .stale),
        (10, 9, .apply),
    ])
    func decides(incoming: UInt64, stored: UInt64?, expected: VersionRule.Decision) {
        #expect(VersionRule.decide(incoming: incoming, stored: stored) == expected)
    }

    /// A group's forward exchange reaches only that group's retry and dead-letter queues.
    @Test func forwardExchangesRouteOnlyToTheirGroupsRetryAndDeadLetterQueues() {
        let declarations = SyncTopology().declarations(forGroup: nil)
        let forwarded = declarations.bindings.filter { $0.exchange == "entitysync.forward.consumer_user_rpc" }
        #expect(Set(forwarded.map(\.queue)) == [
            "exchange_user_consumer_user_rpc.dlq", "exchange_user_consumer_user_rpc.retry",
            "exchange_group_consumer_user_rpc.dlq", "exchange_group_consumer_user_rpc.retry",
        ])
        #expect(forwarded.allSatisfy { $0.routingKey == $0.queue })
    }

    /// Least-privilege regexes: a consumer group reads its own queues and DLQs only, writes only
    /// its forward exchange, configures nothing; the producer covers exactly the topology.
    @Test func permissionsGrantEachServiceOnlyItsOwnResources() throws {
        let topology = SyncTopology()
        func matches(_ pattern: String, _ name: String) throws -> Bool {
            try Regex(pattern).wholeMatch(in: name) != nil
        }
        let userRPC = topology.permissions(forGroup: "consumer_user_rpc")
        #expect(userRPC.configure == "^$")
        for queue in ["exchange_user_consumer_user_rpc", "exchange_group_consumer_user_rpc.dlq"] {
            #expect(try matches(userRPC.read, queue), "\(queue)")
        }
        for other in ["exchange_user_consumer_org_rpc", "exchange_user_consumer_org_rpc.dlq", "exchange_user",
                      "exchange_user_consumer_user_rpc.retry", "exchange_user_consumer_user_rpcX", "xexchange_user_consumer_user_rpc"] {
            #expect(try !matches(userRPC.read, other), "\(other)")
        }
        #expect(try matches(userRPC.write, "entitysync.forward.consumer_user_rpc"))
        for other in ["exchange_user", "amq.default", "", "entitysync.forward.consumer_org_rpc", "entitysync.dlx",
                      "entitysyncXforward.consumer_user_rpc"] {
            #expect(try !matches(userRPC.write, other), "\(other)")
        }
        let producer = topology.permissions(forGroup: nil)
        for name in ["exchange_user", "entitysync.dlx", "exchange_group_consumer_org_rpc.retry", "entitysync.forward.consumer_org_rpc"] {
            #expect(try matches(producer.configure, name) && matches(producer.write, name) && matches(producer.read, name), "\(name)")
        }
        #expect(try matches(producer.write, "amq.default") && !matches(producer.configure, "amq.default"))
        #expect(try !matches(producer.configure, "exchange_widget"))
        #expect(producer.command(user: "p", vhost: "/").hasPrefix("rabbitmqctl set_permissions -p '/' 'p' '^("))
    }
}
