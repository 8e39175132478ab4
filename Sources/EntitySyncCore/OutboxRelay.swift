import AMQPClient
import Logging
import Metrics

/// Publishes the producer's outbox in commit order through the pipelined confirming publisher
/// and removes each record once the broker confirmed it. A crash anywhere between commit and
/// confirm loses nothing: unconfirmed records stay in the outbox and are published again by the
/// next run (a duplicate at worst, which the version rule makes harmless).
public final class OutboxRelay: Sendable {
    public struct Configuration: Sendable {
        /// Records published per batch; also the most that are unconfirmed at once.
        public var batchSize: Int = 256
        /// How long a claim on the outbox lasts without renewal (another producer on the same
        /// store takes over after that).
        public var lease: Duration = .seconds(15)
        /// Wait between empty checks when no commit in this process wakes the relay (covers
        /// commits by another process on the same store).
        public var idleCheck: Duration = .milliseconds(500)
        public var backoff = Backoff(initial: .milliseconds(200), maximum: .seconds(10))

        public init() {}
    }

    private let store: any SourceStore
    private let connection: AMQPConnection
    private let owner: String
    private let configuration: Configuration
    private let logger: Logger
    private let counters: RelayCounters

    public init(store: any SourceStore, connection: AMQPConnection, owner: String,
                configuration: Configuration = Configuration(), logger: Logger) {
        self.store = store
        self.connection = connection
        self.owner = owner
        self.configuration = configuration
        self.counters = RelayCounters()
        var logger = logger
        logger[metadataKey: "relay.owner"] = "\(owner)"
        self.logger = logger
    }

    /// Published, confirmed, returned (unroutable) and retried publishes so far.
    public var statistics: RelayStatistics { self.counters.snapshot }

    /// Runs until the task is cancelled; the batch in flight at cancellation is finished first.
    public func run() async {
        var failures = 0
        self.logger.info("outbox relay started")
        while !Task.isCancelled {
            do {
                let records = try await self.store.claimOutbox(owner: self.owner, lease: self.configuration.lease,
                                                               limit: self.configuration.batchSize)
                guard !records.isEmpty else {
                    self.counters.backlog.record(0)
                    await self.store.commits.wait(timeout: self.configuration.idleCheck)
                    continue
                }
                let failed = try await self.publish(records)
                if failed == 0 {
                    failures = 0
                } else {
                    failures += 1
                    let delay = self.configuration.backoff.delay(attempt: failures - 1)
                    self.logger.warning("outbox publish failed; retrying", metadata: [
                        "outbox.failed": "\(failed)", "outbox.batch": "\(records.count)", "retry_in": "\(delay)",
                    ])
                    try await Task.sleep(for: delay)
                }
            } catch is CancellationError {
                break
            } catch {
                failures += 1
                let delay = self.configuration.backoff.delay(attempt: failures - 1)
                self.logger.error("outbox relay error; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
        self.logger.info("outbox relay stopped")
    }

    /// Publishes one batch in order; removes the confirmed records; returns how many failed.
    private func publish(_ records: [OutboxRecord]) async throws -> Int {
        var items: [PublishItem] = []
        items.reserveCapacity(records.count)
        for record in records {
            let change = try EntityChange(serializedBytes: record.payload)
            items.append(PublishItem(try ChangeCodec.message(for: change, serialized: record.payload),
                                     exchange: SyncTopology.exchange(for: record.kind)))
        }
        self.counters.add(published: records.count)
        self.counters.backlog.record(try await self.store.outboxCount())
        let results = await self.connection.publish(items)
        var confirmed: [Int64] = []
        var firstError: AMQPError?
        var returned = 0
        for (record, result) in zip(records, results) {
            switch result {
            case .success:
                confirmed.append(record.sequence)
            case .failure(let error):
                if error.code == .unroutable { returned += 1 }
                firstError = firstError ?? error
            }
        }
        // Removed even if the process dies right after: the broker has them; if it dies before,
        // they are published again.
        try await self.store.removeOutbox(confirmed)
        self.counters.add(confirmed: confirmed.count, returned: returned, retried: records.count - confirmed.count)
        if let firstError {
            self.logger.warning("outbox publishes not confirmed", metadata: [
                "outbox.unconfirmed": "\(records.count - confirmed.count)", "error": "\(firstError.message)",
            ])
        }
        return records.count - confirmed.count
    }
}

/// Counters of an outbox relay.
public struct RelayStatistics: Sendable, Equatable {
    public var published = 0
    public var confirmed = 0
    public var returned = 0
    public var retried = 0
}

/// Counts in memory (for `statistics`) and reports to swift-metrics.
private final class RelayCounters: Sendable {
    private let state = MutexBox(RelayStatistics())
    private let published = Counter(label: "entitysync_outbox_published_total")
    private let confirmed = Counter(label: "entitysync_outbox_confirmed_total")
    private let returned = Counter(label: "entitysync_outbox_returned_total")
    private let retried = Counter(label: "entitysync_outbox_retried_total")
    let backlog = Gauge(label: "entitysync_outbox_backlog")

    var snapshot: RelayStatistics { self.state.read { $0 } }

    func add(published: Int = 0, confirmed: Int = 0, returned: Int = 0, retried: Int = 0) {
        self.state.update {
            $0.published += published
            $0.confirmed += confirmed
            $0.returned += returned
            $0.retried += retried
        }
        if published > 0 { self.published.increment(by: published) }
        if confirmed > 0 { self.confirmed.increment(by: confirmed) }
        if returned > 0 { self.returned.increment(by: returned) }
        if retried > 0 { self.retried.increment(by: retried) }
    }
}
