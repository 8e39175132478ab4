import AMQPModel
import Foundation
import Logging
import Metrics

/// Publishes the producer's outbox in commit order through the pipelined confirming publisher
/// and removes each record once the broker confirmed it. A crash anywhere between commit and
/// confirm loses nothing: unconfirmed records stay in the outbox and are published again by the
/// next run (a duplicate at worst, which the version rule makes harmless).
///
/// Several producers may share one store; a lease in the store lets one relay publish at a time.
/// The lease outlives the longest publish it covers and is renewed while a batch is in flight,
/// so a second relay never takes over a batch that is still being published.
public final class OutboxRelay: Sendable {
    public struct Configuration: Sendable {
        /// Records published per batch.
        public var batchSize: Int = 256
        /// Batches handed to the broker and not yet confirmed, at most: the relay claims and
        /// hands over the next batch while the broker confirms the last. 1 waits for each
        /// batch's confirms before claiming the next.
        public var pipelineDepth: Int = 2
        /// How long a claim on the outbox lasts without renewal (another producer on the same
        /// store takes over after that). `nil`, the default, derives it from the connection:
        /// its publish timeout plus `leaseMargin`.
        public var lease: Duration?
        /// What a derived lease adds to the publish timeout: the store work before and after a
        /// publish (a SQLite write may wait 10 s for the lock), and scheduling delays.
        public var leaseMargin: Duration = .seconds(15)
        /// Wait between empty checks when no commit in this process wakes the relay (covers
        /// commits by another process on the same store). Each check also renews the lease.
        public var idleCheck: Duration = .milliseconds(500)
        public var backoff = Backoff(initial: .milliseconds(200), maximum: .seconds(10))

        public init() {}

        /// The lease a relay uses over a connection whose publishes wait at most `publishTimeout`.
        public func lease(publishTimeout: Duration) -> Duration {
            self.lease ?? publishTimeout + self.leaseMargin
        }

        /// How often a relay renews its lease while a batch is in flight: three chances before
        /// it would lapse.
        public func leaseRenewal(publishTimeout: Duration) -> Duration {
            self.lease(publishTimeout: publishTimeout) / 3
        }

        /// Throws a configuration error unless the lease outlives every publish it covers and
        /// an idle relay renews it well before it lapses.
        public func validate(publishTimeout: Duration) throws(SyncError) {
            guard self.batchSize >= 1 else {
                throw SyncError(.configuration, "the outbox relay's batch size must be at least 1, not \(self.batchSize)")
            }
            guard self.pipelineDepth >= 1 else {
                throw SyncError(.configuration, "the outbox relay's pipeline depth must be at least 1, not \(self.pipelineDepth)")
            }
            guard self.lease != nil || self.leaseMargin > .zero else {
                throw SyncError(.configuration, "the outbox relay's lease margin must be positive, not \(self.leaseMargin)")
            }
            let lease = self.lease(publishTimeout: publishTimeout)
            guard lease > publishTimeout else {
                throw SyncError(.configuration, "the outbox relay's lease (\(lease)) must be longer than the publish "
                                + "timeout (\(publishTimeout)): otherwise another producer on the same store takes over "
                                + "a batch that is still being published. Leave the lease unset to derive it.")
            }
            guard self.idleCheck > .zero, self.idleCheck * 3 <= lease else {
                throw SyncError(.configuration, "the outbox relay's idle check (\(self.idleCheck)) must be positive and at "
                                + "most a third of its lease (\(lease)), so that an idle relay keeps its lease")
            }
        }
    }

    /// The name this relay holds the store's lease under.
    public let owner: String
    /// How long each claim or renewal of the lease lasts.
    public let lease: Duration
    private let store: any SourceStore
    private let broker: any MessageBroker
    private let configuration: Configuration
    private let logger: Logger
    private let counters: RelayCounters

    /// A relay that holds the lease as exactly `owner`; see `uniqueOwner(instanceName:)`.
    public init(store: any SourceStore, broker: any MessageBroker, owner: String,
                configuration: Configuration = Configuration(), logger: Logger) {
        self.store = store
        self.broker = broker
        self.owner = owner
        self.configuration = configuration
        self.lease = configuration.lease(publishTimeout: broker.publishTimeout)
        self.counters = RelayCounters()
        var logger = logger
        logger[metadataKey: "relay.owner"] = "\(owner)"
        self.logger = logger
    }

    /// A lease owner no other relay has, keeping the human-readable `instanceName` in front: two
    /// producers started with the same name (the default is one per host) must still take turns.
    public static func uniqueOwner(instanceName: String) -> String {
        let suffix = String(UInt32.random(in: .min ... .max), radix: 16)
        let process = ProcessInfo.processInfo
        return "\(instanceName) (host \(process.hostName), pid \(process.processIdentifier), \(suffix))"
    }

    /// Throws a configuration error unless the lease outlives the connection's publish timeout.
    public func validate() throws(SyncError) {
        try self.configuration.validate(publishTimeout: self.broker.publishTimeout)
    }

    /// Published, confirmed, returned (unroutable) and retried publishes so far.
    public var statistics: RelayStatistics { self.counters.snapshot }

    /// Runs until the task is cancelled; the batches in flight at cancellation are seen through first.
    public func run() async {
        do {
            try self.validate()
        } catch {
            // SyncProducer.declareTopology validates first; a relay started without it must not
            // publish under a lease that can lapse mid-batch.
            self.logger.critical("outbox relay not started", metadata: ["error": "\(error)"])
            return
        }
        self.logger.info("outbox relay started", metadata: ["relay.lease": "\(self.lease)"])
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.tick() }
            group.addTask { await self.renewLease() }
            await self.relay()
            group.cancelAll()
        }
        do {
            // In a task of its own: this one is cancelled (that is how the relay stops), and the
            // store refuses work in a cancelled task.
            let (store, owner) = (self.store, self.owner)
            try await Task { try await store.releaseOutboxLease(owner: owner) }.value
        } catch {
            self.logger.warning("could not release the relay lease; another producer takes over when it expires",
                                metadata: ["error": "\(error)", "relay.lease": "\(self.lease)"])
        }
        self.logger.info("outbox relay stopped")
    }

    /// A batch handed to the broker whose confirms have not been looked at yet.
    private struct InFlight {
        let records: [OutboxRecord]
        let ticket: PublishTicket
    }

    /// Claims, publishes and removes batches until cancelled. Up to `pipelineDepth` batches are
    /// with the broker at once, handed over in commit order; a batch's confirmed records are
    /// removed in the transaction that claims a later one, so a batch costs one store round trip.
    private func relay() async {
        var failures = 0
        var confirmed: [Int64] = []
        var inFlight: [InFlight] = []
        // Claims read past the batches in flight (still in the outbox) and leave them out.
        var inFlightSequences = Set<Int64>()
        while !Task.isCancelled {
            do {
                if inFlight.count < self.configuration.pipelineDepth {
                    let limit = self.configuration.batchSize + inFlightSequences.count
                    let claimed = try await self.store.claimOutbox(owner: self.owner, lease: self.lease, limit: limit,
                                                                   removing: confirmed)
                    confirmed = []
                    let records = Array(claimed.lazy.filter { !inFlightSequences.contains($0.sequence) }
                        .prefix(self.configuration.batchSize))
                    if !records.isEmpty {
                        // A short claim was the whole outbox; only a full one needs counting.
                        let backlog = claimed.count < limit ? claimed.count : try await self.store.outboxCount()
                        inFlight.append(InFlight(records: records, ticket: try self.submit(records, backlog: backlog)))
                        inFlightSequences.formUnion(records.lazy.map(\.sequence))
                        continue
                    }
                    if inFlight.isEmpty {
                        self.counters.backlog.record(0)
                        // Woken by this process's next commit, or by the tick.
                        await self.store.commits.wait()
                        continue
                    }
                }
                // Confirms are awaited whatever happens to this task: a batch handed over is
                // seen through, so that what the broker took is removed.
                let oldest = inFlight.removeFirst()
                let outcome = await self.settle(oldest)
                inFlightSequences.subtract(oldest.records.lazy.map(\.sequence))
                confirmed += outcome
                let failed = oldest.records.count - outcome.count
                guard failed > 0 else {
                    failures = 0
                    continue
                }
                // The failed records are claimed again, after the batches behind them: those are
                // settled first. A later version published before an earlier one is harmless
                // (consumers keep the highest).
                for batch in inFlight { confirmed += await self.settle(batch) }
                inFlight = []
                inFlightSequences = []
                failures += 1
                let delay = self.configuration.backoff.delay(attempt: failures - 1)
                self.logger.warning("outbox publish failed; retrying", metadata: [
                    "outbox.failed": "\(failed)", "outbox.batch": "\(oldest.records.count)", "retry_in": "\(delay)",
                ])
                try await Task.sleep(for: delay)
            } catch is CancellationError {
                break
            } catch {
                // A claim that failed removed nothing either: `confirmed` goes with the next one,
                // with what the batches in flight settle to (they are not left unlooked-at for
                // as long as the store is out).
                for batch in inFlight { confirmed += await self.settle(batch) }
                inFlight = []
                inFlightSequences = []
                failures += 1
                let delay = self.configuration.backoff.delay(attempt: failures - 1)
                self.logger.error("outbox relay error; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
        for batch in inFlight { confirmed += await self.settle(batch) }
        guard !confirmed.isEmpty else { return }
        // Not cancelled with the relay (GRDB refuses to start work in a cancelled task): a
        // stopping producer must not leave confirmed rows to be sent twice.
        do {
            let (store, sequences) = (self.store, confirmed)
            try await Task { try await store.removeOutbox(sequences) }.value
        } catch {
            self.logger.warning("could not remove confirmed outbox records; the next relay publishes them again",
                                metadata: ["outbox.confirmed": "\(confirmed.count)", "error": "\(error)"])
        }
    }

    /// While the relay runs: wakes it every idle check, for commits by another process on the
    /// same store (which signal nothing here). One timer for the relay's life: a timer per idle
    /// wait was most of the relay's thread wake-ups.
    private func tick() async {
        while true {
            do {
                try await Task.sleep(for: self.configuration.idleCheck)
            } catch {
                return
            }
            self.store.commits.signal()
        }
    }

    /// While the relay runs: renews the lease every third of it, so that a batch whose publish or
    /// store work stalls keeps it. Apart from `tick`, so that a renewal waiting on the store (a
    /// write lock another process holds) never delays the idle checks.
    private func renewLease() async {
        let renewal = self.configuration.leaseRenewal(publishTimeout: self.broker.publishTimeout)
        while true {
            do {
                try await Task.sleep(for: renewal)
            } catch {
                return
            }
            // Limit 0: renews (or, if it lapsed and nobody took it, retakes) the lease without
            // reading records. Never takes a lease another relay holds.
            do {
                _ = try await self.store.claimOutbox(owner: self.owner, lease: self.lease, limit: 0)
            } catch {
                self.logger.warning("could not renew the outbox lease", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Hands one batch to the broker, in order; `backlog` is how many records the claim found.
    private func submit(_ records: [OutboxRecord], backlog: Int) throws -> PublishTicket {
        var items: [PublishItem] = []
        items.reserveCapacity(records.count)
        for record in records {
            items.append(PublishItem(try ChangeCodec.message(serialized: record.payload), exchange: SyncTopology.exchange(for: record.kind)))
        }
        self.counters.add(published: records.count)
        self.counters.backlog.record(backlog)
        return self.broker.submit(items)
    }

    /// Waits for a batch's confirms; the sequences the broker confirmed.
    private func settle(_ batch: InFlight) async -> [Int64] {
        let results = await batch.ticket.outcomes()
        var confirmed: [Int64] = []
        confirmed.reserveCapacity(batch.records.count)
        var firstError: AMQPError?
        var returned = 0
        for (record, result) in zip(batch.records, results) {
            switch result {
            case .success:
                confirmed.append(record.sequence)
            case .failure(let error):
                if error.code == .unroutable { returned += 1 }
                firstError = firstError ?? error
            }
        }
        self.counters.add(confirmed: confirmed.count, returned: returned, retried: batch.records.count - confirmed.count)
        if let firstError {
            self.logger.warning("outbox publishes not confirmed", metadata: [
                "outbox.unconfirmed": "\(batch.records.count - confirmed.count)", "error": "\(firstError.message)",
            ])
        }
        return confirmed
    }
}
