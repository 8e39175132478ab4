import AMQPModel
import Foundation
import Logging
import Metrics

/// Counters of an outbox relay.
public struct RelayStatistics: Sendable, Equatable {
    public var published = 0
    public var confirmed = 0
    public var returned = 0
    public var retried = 0
}

/// Counts in memory (for `statistics`) and reports to swift-metrics.
final class RelayCounters: Sendable {
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
