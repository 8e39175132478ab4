/// The consumers of a connection by registration id, with an index from channel number to id.
///
/// Every delivery looks its consumer up by channel: a scan of the dictionary copied each
/// `ConsumerState` it passed (retaining its strings, replies and tag queue), and a copy held
/// while the tag was appended made the append copy the whole queue of unsettled tags.
struct ConsumerTable {
    private var states: [Int: ConsumerState] = [:]
    private var idByChannel: [UInt16: Int] = [:]
    private var channelByID: [Int: UInt16] = [:]

    subscript(id: Int) -> ConsumerState? {
        get { self.states[id] }
        set {
            self.states[id] = newValue
            self.reindex(id)
        }
        _modify {
            // Deferred so that an access ended by a thrown error reindexes too.
            defer { self.reindex(id) }
            yield &self.states[id]
        }
    }

    var keys: Dictionary<Int, ConsumerState>.Keys { self.states.keys }
    var values: Dictionary<Int, ConsumerState>.Values { self.states.values }
    var isEmpty: Bool { self.states.isEmpty }
    var count: Int { self.states.count }

    /// The consumer that owns `channel`, if any (a channel carries at most one consumer).
    func id(onChannel channel: UInt16) -> Int? {
        self.idByChannel[channel]
    }

    /// Runs `body` on the stored state in place; nil if there is no consumer `id`.
    mutating func update<Result>(_ id: Int, _ body: (inout ConsumerState) -> Result) -> Result? {
        guard let index = self.states.index(forKey: id) else { return nil }
        return Self.update(&self.states.values[index], body)
    }

    /// `channel` is a `let`, but `body` could still store a whole other state: that would leave
    /// the index stale, so it is refused.
    private static func update<Result>(_ state: inout ConsumerState, _ body: (inout ConsumerState) -> Result) -> Result {
        let channel = state.channel
        defer { precondition(state.channel == channel, "ConsumerTable.update must not move a consumer to another channel") }
        return body(&state)
    }

    mutating func removeValue(forKey id: Int) -> ConsumerState? {
        let state = self.states.removeValue(forKey: id)
        self.reindex(id)
        return state
    }

    mutating func removeAll() {
        self.states.removeAll()
        self.idByChannel.removeAll()
        self.channelByID.removeAll()
    }

    private mutating func reindex(_ id: Int) {
        let current = self.states.index(forKey: id).map { Self.channel(of: &self.states.values[$0]) }
        let indexed = self.channelByID[id]
        guard current != indexed else { return }
        if let indexed, self.idByChannel[indexed] == id { self.idByChannel[indexed] = nil }
        self.channelByID[id] = current
        if let current { self.idByChannel[current] = id }
    }

    /// Reads the channel through an in-place access rather than a copy of the whole state.
    private static func channel(of state: inout ConsumerState) -> UInt16 { state.channel }
}
