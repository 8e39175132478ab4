import AMQPModel

/// Which consumer groups receive which entity types, and every exchange and queue name that
/// follows from it. Names are fixed by convention so every service derives the same ones:
/// exchange `exchange_<entity>`, queue `exchange_<entity>_<group>`, and per queue a dead-letter
/// queue `<queue>.dlq` and a retry queue `<queue>.retry`.
public struct SyncTopology: Sendable, Equatable {
    /// Entity type → consumer groups (e.g. `consumer_user_rpc`).
    public var routes: [EntityKind: [String]]
    public var queueType: QueueArguments.QueueType
    /// Quorum queues only: deliveries (including redeliveries after a consumer crashed) after
    /// which the broker dead-letters a message instead of delivering it again.
    public var deliveryLimit: Int

    /// The exchange every dead-lettered message goes through, routed by dead-letter queue name.
    public static let deadLetterExchange = "entitysync.dlx"

    public static let defaultGroups = ["consumer_user_rpc", "consumer_org_rpc"]

    public init(routes: [EntityKind: [String]] = [.user: Self.defaultGroups, .group: Self.defaultGroups],
                queueType: QueueArguments.QueueType = .quorum, deliveryLimit: Int = 5) {
        self.routes = routes
        self.queueType = queueType
        self.deliveryLimit = deliveryLimit
    }

    public static func exchange(for kind: EntityKind) -> String { "exchange_\(kind.rawValue)" }
    public static func queue(for kind: EntityKind, group: String) -> String { "\(self.exchange(for: kind))_\(group)" }
    public static func deadLetterQueue(forQueue queue: String) -> String { "\(queue).dlq" }
    public static func retryQueue(forQueue queue: String) -> String { "\(queue).retry" }
    /// The exchange through which a group's consumers put messages into that group's retry and
    /// dead-letter queues: publishing there needs write permission on it alone, where the
    /// default exchange would reach every queue of the vhost.
    public static func forwardExchange(forGroup group: String) -> String { "entitysync.forward.\(group)" }

    /// `user-rpc` → `consumer_user_rpc`: the group name a service kind consumes as.
    public static func groupName(forService service: String) -> String {
        "consumer_" + service.replacingOccurrences(of: "-", with: "_")
    }

    /// Every group named in the routes, sorted.
    public var groups: [String] { Array(Set(self.routes.values.joined())).sorted() }

    /// The entity types `group` consumes and the queue for each, in a stable order.
    public func queues(forGroup group: String) -> [(kind: EntityKind, queue: String)] {
        self.routes.keys.sorted().filter { self.routes[$0]?.contains(group) == true }
            .map { ($0, Self.queue(for: $0, group: group)) }
    }

    /// Rejects group names that would make odd queue names, saying which and why.
    public func validate() throws(SyncError) {
        for group in self.groups {
            guard !group.isEmpty, group.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "_" }), group.first?.isLetter == true else {
                throw SyncError(.configuration, "consumer group name '\(group)' must start with a letter and contain only "
                                + "lowercase letters, digits and '_' (it becomes part of queue names)")
            }
        }
        if self.queueType == .quorum && self.deliveryLimit < 1 {
            throw SyncError(.configuration, "the delivery limit must be at least 1 (got \(self.deliveryLimit))")
        }
    }

    /// What to declare: everything when `group` is nil (the producer), otherwise what one
    /// consumer group needs (its queues, with the same arguments the producer uses).
    public func declarations(forGroup group: String?) -> Declarations {
        var result = Declarations()
        result.exchanges.append(ExchangeSpec(name: Self.deadLetterExchange, kind: .direct))
        for kind in self.routes.keys.sorted() {
            let exchange = Self.exchange(for: kind)
            result.exchanges.append(ExchangeSpec(name: exchange, kind: .fanout))
            for consumerGroup in self.routes[kind, default: []] where group == nil || group == consumerGroup {
                let queue = Self.queue(for: kind, group: consumerGroup)
                let deadLetterQueue = Self.deadLetterQueue(forQueue: queue)
                result.queues.append(QueueSpec(name: queue, arguments: self.mainQueueArguments(deadLetterQueue: deadLetterQueue)))
                result.queues.append(QueueSpec(name: deadLetterQueue, arguments: self.deadLetterQueueArguments))
                result.queues.append(QueueSpec(name: Self.retryQueue(forQueue: queue), arguments: self.retryQueueArguments(queue: queue)))
                result.bindings.append(BindingSpec(queue: queue, exchange: exchange))
                result.bindings.append(BindingSpec(queue: deadLetterQueue, exchange: Self.deadLetterExchange,
                                                   routingKey: deadLetterQueue))
                let forward = Self.forwardExchange(forGroup: consumerGroup)
                for target in [deadLetterQueue, Self.retryQueue(forQueue: queue)] {
                    result.bindings.append(BindingSpec(queue: target, exchange: forward, routingKey: target))
                }
            }
        }
        for consumerGroup in self.groups where group == nil || group == consumerGroup {
            result.exchanges.append(ExchangeSpec(name: Self.forwardExchange(forGroup: consumerGroup), kind: .direct))
        }
        return result
    }

    /// Makes sure what `group` (nil: the producer) needs on the broker exists: declares it, or
    /// with `declare` false only checks that the group's queues are there (the producer declared
    /// them). A refusal by the broker becomes an error that says which permission to grant.
    public func prepare(forGroup group: String?, declare: Bool, on broker: any MessageBroker) async throws {
        try await self.refuseUnfinishedMigration(forGroup: group, on: broker)
        if declare {
            do {
                try await self.declarations(forGroup: group).declare(on: broker)
            } catch let error as AMQPError where error.code == .preconditionFailed {
                // The client's generic advice (configure the old arguments, or delete the queue and
                // lose its messages) is wrong here: the arguments are EntitySync's, and migrate keeps the messages.
                let what = error.message.components(separatedBy: " Queue arguments cannot change").first ?? error.message
                throw SyncError(.configuration, "\(what) The queues were declared by an earlier EntitySync with other "
                                + "arguments, which RabbitMQ cannot change in place. Stop the consumer services, then run "
                                + "`entity-sync topology migrate` (it moves every message over; see docs/OPERATIONS.md, "
                                + "\"Upgrading queue arguments\").")
            } catch let error as AMQPError where error.code == .accessRefused {
                let remedy = group == nil
                    ? "grant the producer's user the permissions that `entity-sync topology permissions` prints"
                    : "let the producer declare them and start this service with --declare-topology false "
                        + "(ENTITY_SYNC_DECLARE_TOPOLOGY=false), or grant its user configure permission on them"
                throw SyncError(.configuration, "the broker refused to let this service declare its exchanges and queues "
                                + "(\(error.message)); \(remedy)")
            }
            return
        }
        guard let group else { return }
        for (_, queue) in self.queues(forGroup: group) {
            for name in [queue, Self.deadLetterQueue(forQueue: queue), Self.retryQueue(forQueue: queue)] {
                do {
                    _ = try await broker.queueStatus(name)
                } catch let error as AMQPError where error.code == .notFound {
                    throw SyncError(.configuration, "queue '\(name)' does not exist, and this service does not declare queues "
                                    + "(--declare-topology false): start the producer first (it declares them), "
                                    + "or run `entity-sync topology declare` as a user that may")
                }
            }
        }
    }

    /// A `<queue>.migrating` left by an interrupted `topology migrate` holds messages its queue
    /// must get back, and still receives a copy of every event: starting on top of it would strand
    /// them. A user that may not look at it (least privilege) cannot tell, and goes on.
    private func refuseUnfinishedMigration(forGroup group: String?, on broker: any MessageBroker) async throws {
        for queue in self.declarations(forGroup: group).queues {
            let temporary = TopologyMigration.temporaryQueue(for: queue.name)
            do {
                let status = try await broker.queueStatus(temporary)
                throw SyncError(.configuration, "queue '\(temporary)' exists (\(status.messageCount) message(s)): a "
                                + "`entity-sync topology migrate` was interrupted. Stop the consumer services and run it "
                                + "again to finish it, then start the services")
            } catch let error as AMQPError where error.code == .notFound || error.code == .accessRefused {
                continue
            }
        }
    }

    /// RabbitMQ permissions (configure, write, read regexes) for least privilege: the producer
    /// (`group` nil) may declare, bind and publish to everything the topology names and nothing
    /// else; a consumer group may declare nothing, write only to its forward exchange, and read
    /// only its own queues and their dead-letter queues.
    public func permissions(forGroup group: String?) -> BrokerPermissions {
        func anyOf(_ names: [String]) -> String {
            let escaped = Set(names).sorted().map { name in
                name.unicodeScalars.map { ".+*?^$()[]{}|\\".unicodeScalars.contains($0) ? "\\\($0)" : String($0) }.joined()
            }
            return escaped.isEmpty ? "^$" : "^(" + escaped.joined(separator: "|") + ")$"
        }
        guard let group else {
            let all = self.declarations(forGroup: nil)
            let names = all.exchanges.map(\.name) + all.queues.map(\.name)
            // Declaring a retry queue whose dead-letter exchange is the default one needs write
            // permission on it ("amq.default" to the broker's permission checks).
            return BrokerPermissions(configure: anyOf(names), write: anyOf(names + ["amq.default"]), read: anyOf(names))
        }
        let queues = self.queues(forGroup: group).flatMap { [$0.queue, Self.deadLetterQueue(forQueue: $0.queue)] }
        return BrokerPermissions(configure: "^$", write: anyOf([Self.forwardExchange(forGroup: group)]), read: anyOf(queues))
    }

    /// A quorum dead-letter queue's delivery limit: high enough that listing (which takes
    /// messages and returns them, each return counting as a delivery) can never make the broker
    /// drop one. Not -1, which switches the limit off on 4.x but drops every returned message on
    /// 3.10; and not unset, which means a limit of 20 on 4.x.
    public static let deadLetterQueueDeliveryLimit = 1_000_000_000

    /// Quorum queues move messages on (main → dead-letter queue, retry → main) at-least-once: the
    /// broker keeps a message until its target confirms it, so a target that is unavailable at
    /// that moment loses nothing. This needs `reject-publish` overflow; without it the broker
    /// silently falls back to at-most-once. Classic queues cannot: they stay at-most-once.
    private var movesAtLeastOnce: Bool { self.queueType == .quorum }

    private func mainQueueArguments(deadLetterQueue: String) -> QueueArguments {
        QueueArguments(queueType: self.queueType, deadLetterExchange: Self.deadLetterExchange,
                       deadLetterRoutingKey: deadLetterQueue,
                       deliveryLimit: self.queueType == .quorum ? self.deliveryLimit : nil,
                       overflow: self.movesAtLeastOnce ? .rejectPublish : nil,
                       deadLetterStrategy: self.movesAtLeastOnce ? .atLeastOnce : nil)
    }

    private var deadLetterQueueArguments: QueueArguments {
        QueueArguments(queueType: self.queueType,
                       deliveryLimit: self.queueType == .quorum ? Self.deadLetterQueueDeliveryLimit : nil)
    }

    /// Messages wait here with a per-message TTL (the growing retry delay), then the broker
    /// dead-letters them back to `queue` through the default exchange.
    private func retryQueueArguments(queue: String) -> QueueArguments {
        QueueArguments(queueType: self.queueType == .quorum ? .quorum : .classic, deadLetterExchange: "",
                       deadLetterRoutingKey: queue,
                       overflow: self.movesAtLeastOnce ? .rejectPublish : nil,
                       deadLetterStrategy: self.movesAtLeastOnce ? .atLeastOnce : nil)
    }

    /// Exchanges, queues and bindings in the order they must be declared.
    public struct Declarations: Sendable, Equatable {
        public var exchanges: [ExchangeSpec] = []
        public var queues: [QueueSpec] = []
        public var bindings: [BindingSpec] = []

        /// Declares everything (idempotent); a mismatch with an existing queue fails with the
        /// client's error naming the queue and the argument.
        public func declare(on broker: any MessageBroker) async throws {
            for exchange in self.exchanges { try await broker.declare(exchange) }
            for queue in self.queues { try await broker.declare(queue) }
            for binding in self.bindings { try await broker.bind(binding) }
        }
    }
}
