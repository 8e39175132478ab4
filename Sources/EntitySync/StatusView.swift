import EntitySyncProto
import EntitySyncServices
import Foundation
import SwiftProtobuf

/// What `ctl status` shows: the producer's outbox and each consumer group's sync status, as text
/// for people or as JSON lines (one SyncStatus per group).
struct StatusView {
    enum ProducerLine {
        case outbox(address: HostPort, pending: UInt64)
        case failed(String)
    }

    struct GroupStatus {
        var address: HostPort
        var outcome: Result<Entitysync_V1_SyncStatus, CtlError>
    }

    var producer = ProducerLine.failed("not asked")
    var groups: [GroupStatus] = []

    var statuses: [Entitysync_V1_SyncStatus] { self.groups.compactMap { try? $0.outcome.get() } }
    /// Why each group that could not be asked could not.
    var failures: [String] {
        self.groups.compactMap { if case .failure(let error) = $0.outcome { error.description } else { nil } }
    }

    func jsonLines() throws -> [String] { try self.statuses.map { try $0.jsonString() } }

    func text(now: Date = Date()) -> String {
        var text = switch self.producer {
        case .outbox(let address, let pending):
            "producer at \(address): \(pending) event(s) in the outbox, not yet confirmed by the broker\n\n"
        case .failed(let error):
            "producer: \(error)\n\n"
        }
        for group in self.groups {
            switch group.outcome {
            case .success(let status): text += Self.render(status, at: group.address, now: now)
            case .failure(let error): text += "\(group.address): \(error)\n\n"
            }
        }
        return text
    }

    static func render(_ status: Entitysync_V1_SyncStatus, at address: HostPort, now: Date) -> String {
        let entities = Table.render(header: ["entity", "held", "highest version", "applied", "stale", "dead-lettered", "last applied"],
                                    rows: status.entities.map { entity in
            [entity.entityType == .user ? "user" : "group", "\(entity.entitiesHeld)", "\(entity.highestVersion)",
             "\(entity.eventsApplied)", "\(entity.eventsStale)", "\(entity.eventsDeadLettered)",
             entity.hasLastAppliedAt ? Self.age(now.timeIntervalSince(entity.lastAppliedAt.date)) : "never"]
        })
        let queues = Table.render(header: ["queue", "ready", "retrying", "lag", "consumers", "dead letters"], rows: status.queues.map {
            [$0.queue, "\($0.messages)", "\($0.retryMessages)", "\($0.messages + $0.retryMessages)", "\($0.consumers)",
             "\($0.deadLetterMessages)"]
        })
        return "\(status.consumerGroup) at \(address)\n\(Self.bootstrap(status, now: now))\n\(entities)\n\n\(queues)\n\n"
    }

    /// One line on how the group's store came to hold what it holds, with what to do when it may lack entities.
    static func bootstrap(_ status: Entitysync_V1_SyncStatus, now: Date) -> String {
        let started = status.hasBootstrapStartedAt ? Self.age(now.timeIntervalSince(status.bootstrapStartedAt.date)) : "?"
        switch status.bootstrap {
        case .complete:
            let completed = status.hasBootstrapCompletedAt ? Self.age(now.timeIntervalSince(status.bootstrapCompletedAt.date)) : "?"
            let marks = status.entities.map {
                "\($0.snapshotEntities) \($0.entityType == .user ? "user" : "group")(s) up to v\($0.snapshotHighestVersion)"
            }
            return "bootstrap: complete (snapshot loaded \(completed): \(marks.joined(separator: ", ")))"
        case .queuesOnly:
            return "bootstrap: from queues only (no snapshot loaded: right only if the queues held the group's whole history)"
        case .inProgress:
            return "bootstrap: in progress (started \(started); the loading instance is NOT_SERVING until done)"
        case .incomplete:
            return "bootstrap: INCOMPLETE (started \(started), never finished; entities may be missing: "
                + "start an instance with --producer to finish it)"
        case .unspecified, .UNRECOGNIZED:
            return "bootstrap: not reported by this service"
        }
    }

    static func age(_ seconds: TimeInterval) -> String {
        switch seconds {
        case ..<1: return "just now"
        case ..<120: return "\(Int(seconds)) s ago"
        case ..<7200: return "\(Int(seconds / 60)) min ago"
        default: return "\(Int(seconds / 3600)) h ago"
        }
    }
}
