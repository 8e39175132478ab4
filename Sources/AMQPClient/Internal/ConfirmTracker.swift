import DequeModule

/// Why the broker returned a mandatory message (basic.return).
struct ReturnInfo: Sendable, Hashable {
    var replyCode: UInt16
    var replyText: String
    var exchange: String
    var routingKey: String
}

/// Publisher-confirm bookkeeping for one channel in confirm mode: sequence numbers, acks and nacks
/// (single and multiple), returns that precede their ack, and expiry. Pure; no I/O.
struct ConfirmTracker<Token> {
    enum Outcome {
        case confirmed
        case returned(ReturnInfo)
        case nacked
    }

    private struct Entry {
        var token: Token
        var returned: ReturnInfo?
    }

    /// Sequence number of `entries.first`; confirm mode numbers publishes from 1 on each channel.
    private var base: UInt64 = 1
    private var entries: Deque<Entry?> = []
    private(set) var outstanding = 0

    var isEmpty: Bool { self.outstanding == 0 }
    var nextSequenceNumber: UInt64 { self.base + UInt64(self.entries.count) }

    /// Records a publish just sent; returns its sequence number (the delivery tag of its confirm).
    @discardableResult
    mutating func register(_ token: Token) -> UInt64 {
        let sequenceNumber = self.nextSequenceNumber
        self.entries.append(Entry(token: token))
        self.outstanding += 1
        return sequenceNumber
    }

    /// Marks the oldest unconfirmed, not yet returned publish that `matches` as returned. Returns
    /// arrive in publish order and before the publish's own ack, so the oldest match is the one.
    mutating func markReturned(_ info: ReturnInfo, where matches: (Token) -> Bool) -> Bool {
        for index in self.entries.indices {
            guard let entry = self.entries[index], entry.returned == nil, matches(entry.token) else { continue }
            self.entries[index]?.returned = info
            return true
        }
        return false
    }

    /// Applies a basic.ack (`nack == false`) or basic.nack for `tag`, with the `multiple` flag.
    mutating func settle(tag: UInt64, multiple: Bool, nack: Bool) -> [(token: Token, outcome: Outcome)] {
        // Tags below `base` were settled already; tags past the end were never sent on this channel.
        guard tag >= self.base, tag - self.base < UInt64(self.entries.count) else { return [] }
        let last = Int(tag - self.base)
        let first = multiple ? 0 : last
        var settled: [(token: Token, outcome: Outcome)] = []
        for index in first...last {
            guard let entry = self.entries[index].take() else { continue }
            self.outstanding -= 1
            let outcome: Outcome
            if nack {
                outcome = .nacked
            } else if let returned = entry.returned {
                outcome = .returned(returned)
            } else {
                outcome = .confirmed
            }
            settled.append((entry.token, outcome))
        }
        self.compact()
        return settled
    }

    /// Removes, oldest first, the unconfirmed publishes for which `isExpired` holds, stopping at the
    /// first that has not expired (publishes are registered in deadline order).
    mutating func expire(where isExpired: (Token) -> Bool) -> [Token] {
        var expired: [Token] = []
        self.compact()
        while let first = self.entries.first, let entry = first, isExpired(entry.token) {
            expired.append(entry.token)
            self.entries.removeFirst()
            self.base += 1
            self.outstanding -= 1
            self.compact()
        }
        return expired
    }

    /// Forgets everything (the channel closed); returns the publishes that were never confirmed.
    /// Numbering restarts at 1, as it does on a fresh channel.
    mutating func reset() -> [Token] {
        let pending = self.entries.compactMap { $0?.token }
        self.entries.removeAll()
        self.base = 1
        self.outstanding = 0
        return pending
    }

    private mutating func compact() {
        while let first = self.entries.first, first == nil {
            self.entries.removeFirst()
            self.base += 1
        }
    }
}
