/// Everything a connection declared, replayed in this order after it reconnects.
struct RecordedTopology: Sendable {
    private(set) var exchanges: [ExchangeSpec] = []
    private(set) var queues: [QueueSpec] = []
    private(set) var bindings: [BindingSpec] = []

    mutating func record(_ exchange: ExchangeSpec) {
        self.exchanges.removeAll { $0.name == exchange.name }
        self.exchanges.append(exchange)
    }

    mutating func record(_ queue: QueueSpec) {
        self.queues.removeAll { $0.name == queue.name }
        self.queues.append(queue)
    }

    mutating func record(_ binding: BindingSpec) {
        if !self.bindings.contains(binding) { self.bindings.append(binding) }
    }

    mutating func forget(_ binding: BindingSpec) {
        self.bindings.removeAll { $0 == binding }
    }

    mutating func forgetQueue(named name: String) {
        self.queues.removeAll { $0.name == name }
        self.bindings.removeAll { $0.queue == name }
    }

    mutating func forgetExchange(named name: String) {
        self.exchanges.removeAll { $0.name == name }
        self.bindings.removeAll { $0.exchange == name }
    }

    func queue(named name: String) -> QueueSpec? { self.queues.first { $0.name == name } }
    func bindings(ofQueue name: String) -> [BindingSpec] { self.bindings.filter { $0.queue == name } }
}
