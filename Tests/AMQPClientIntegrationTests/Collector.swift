/// Collects what a test observed from concurrent tasks.
actor Collector<Element: Hashable & Sendable> {
    private(set) var items: [Element] = []
    func add(_ item: Element) { self.items.append(item) }
    var set: Set<Element> { Set(self.items) }
    var count: Int { self.items.count }
}
