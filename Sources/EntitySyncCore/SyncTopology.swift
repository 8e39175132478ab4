import AMQPClient

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
                result.queues.append(QueueSpec(name: deadLetterQueue, arguments: QueueArguments(queueType: self.queueType)))
                // Classic: per-message TTL (growing retry delays) works on every broker version.
                result.queues.append(QueueSpec(name: Self.retryQueue(forQueue: queue), arguments: QueueArguments(
                    queueType: .classic, deadLetterExchange: "", deadLetterRoutingKey: queue)))
                result.bindings.append(BindingSpec(queue: queue, exchange: exchange))
                result.bindings.append(BindingSpec(queue: deadLetterQueue, exchange: Self.deadLetterExchange,
                                                   routingKey: deadLetterQueue))
            }
        }
        return result
    }

    private func mainQueueArguments(deadLetterQueue: String) -> QueueArguments {
        QueueArguments(queueType: self.queueType, deadLetterExchange: Self.deadLetterExchange,
                       deadLetterRoutingKey: deadLetterQueue,
                       deliveryLimit: self.queueType == .quorum ? self.deliveryLimit : nil)
    }

    /// Exchanges, queues and bindings in the order they must be declared.
    public struct Declarations: Sendable, Equatable {
        public var exchanges: [ExchangeSpec] = []
        public var queues: [QueueSpec] = []
        public var bindings: [BindingSpec] = []

        /// Declares everything (idempotent); a mismatch with an existing queue fails with the
        /// client's error naming the queue and the argument.
        public func declare(on connection: AMQPConnection) async throws {
            for exchange in self.exchanges { try await connection.declare(exchange) }
            for queue in self.queues { try await connection.declare(queue) }
            for binding in self.bindings { try await connection.bind(binding) }
        }
    }
}
