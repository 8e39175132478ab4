import ArgumentParser
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import Foundation
import GRPCCore
import SwiftProtobuf

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show per consumer group what it has applied, and per queue its depth, dead letters and lag.",
        discussion: """
            Lag is the events a group has not applied yet: those ready in its queue plus those waiting \
            in its retry queue. The producer's outbox line counts changes committed but not yet \
            confirmed by the broker. With --watch the view refreshes in place until Ctrl-C.
            """)
    @OptionGroup var options: CtlOptions
    @Flag(help: "Refresh in place until interrupted.") var watch = false
    @Option(help: "Seconds between refreshes with --watch.") var interval: Double = 2

    func run() async throws {
        guard self.interval >= 0.2 else { throw ValidationError("--interval must be at least 0.2 seconds") }
        guard self.watch else {
            try await Self.show(options: self.options)
            return
        }
        let tty = Terminal.outputIsTerminal
        while !Task.isCancelled {
            let view = await Self.view(options: self.options)
            let stamp = "entity-sync ctl status --watch (every \(self.interval) s; Ctrl-C to stop)  \(Date())\n\n"
            // Home, draw, clear what is left of a longer previous view: no flicker.
            let frame = (tty ? "\u{1B}[H" : "") + stamp + view.text + (tty ? "\u{1B}[J" : "\n")
            guard Terminal.write(frame) else { return }
            try await Task.sleep(for: .milliseconds(Int64(self.interval * 1000)))
        }
    }

    /// Prints the status once; fails if a service could not be asked.
    static func show(options: CtlOptions) async throws {
        let view = await self.view(options: options)
        if options.json {
            for status in view.statuses { Swift.print(try status.jsonString()) }
        } else {
            Swift.print(view.text, terminator: "")
        }
        if let failure = view.failures.first { throw CtlError(description: failure) }
    }

    struct View {
        var text = ""
        var statuses: [Entitysync_V1_SyncStatus] = []
        var failures: [String] = []
    }

    static func view(options: CtlOptions) async -> View {
        var view = View()
        do {
            let producer = try options.producerAddress
            let outbox = try await options.withClient(producer) { client in
                try await Entitysync_V1_EntityAdmin.Client(wrapping: client).getOutboxStatus(Entitysync_V1_GetOutboxStatusRequest())
            }
            view.text += "producer at \(producer): \(outbox.pendingEvents) event(s) in the outbox, not yet confirmed by the broker\n\n"
        } catch {
            // The consumer groups' view is still worth showing without the producer.
            view.text += "producer: \(error)\n\n"
        }
        for address in [try? options.userRPCAddress, try? options.orgRPCAddress].compactMap({ $0 }) {
            do {
                let status = try await options.withClient(address) { client in
                    try await Entitysync_V1_SyncInfo.Client(wrapping: client).getSyncStatus(Entitysync_V1_GetSyncStatusRequest())
                }
                view.statuses.append(status)
                view.text += Self.render(status, at: address)
            } catch {
                view.failures.append("\(error)")
                view.text += "\(address): \(error)\n\n"
            }
        }
        return view
    }

    static func render(_ status: Entitysync_V1_SyncStatus, at address: HostPort) -> String {
        let now = Date()
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

struct Wait: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Wait until user-rpc or org-rpc has applied an entity's version.")
    @OptionGroup var options: CtlOptions
    @Option(help: "user or group.") var type: String
    @Option var id: String
    @Option var version: UInt64
    @Option(help: "Which service to ask: user-rpc or org-rpc.") var service: Source = .userRPC
    @Option(help: "Milliseconds to wait at most.") var timeoutMs: UInt32 = 5000

    func run() async throws {
        var request = Entitysync_V1_WaitForVersionRequest()
        guard let kind = ["user": Entitysync_V1_EntityType.user, "group": .group][self.type] else {
            throw ValidationError("--type must be user or group")
        }
        request.entityType = kind
        request.entityID = self.id
        request.version = self.version
        request.timeoutMs = self.timeoutMs
        let address = self.service == .orgRPC ? try self.options.orgRPCAddress : try self.options.userRPCAddress
        let sent = request
        let response = try await self.options.withClient(address) { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).waitForVersion(sent)
        }
        try self.options.print(response) { "\(self.type) \(self.id) is at version \(response.version) on \(address)" }
    }
}
