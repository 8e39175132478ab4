import ArgumentParser
import EntitySyncCore
import EntitySyncServices
import Logging
import ServiceLifecycle

struct ConsumerOptions: ParsableArguments {
    @Option(help: "host:port of the producer, to load its snapshot when this group's store is empty (env: ENTITY_SYNC_PRODUCER; default: none).")
    var producer: String?

    @Option(help: "Unacknowledged deliveries per queue at most, and the most applied in one transaction (env: ENTITY_SYNC_PREFETCH; default: 4096).")
    var prefetch: UInt16?

    @Option(help: "Bearer token required to re-drive dead letters (env: ENTITY_SYNC_TOKEN; default: none). Set one in production.")
    var token: String?

    @Option(help: "true: declare this group's queues at startup; false: only check that the producer declared them, for a broker user without configure permission (env: ENTITY_SYNC_DECLARE_TOPOLOGY; default: true).")
    var declareTopology: String?
}
