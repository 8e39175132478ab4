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
        commandName: "status",
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
            // A fresh session each refresh: a reused connection to a service that restarted
            // would sit in its reconnect backoff and show it unreachable long after it is back.
            let view = try await CtlSession.run { await Self.view(options: self.options) }
            let stamp = "entity-sync ctl status --watch (every \(self.interval) s; Ctrl-C to stop)  \(Date())\n\n"
            // Home, draw, clear what is left of a longer previous view: no flicker.
            let frame = (tty ? "\u{1B}[H" : "") + stamp + view.text() + (tty ? "\u{1B}[J" : "\n")
            guard Terminal.write(frame) else { return }
            try await Task.sleep(for: .milliseconds(Int64(self.interval * 1000)))
        }
    }

    /// Prints the status once; fails if a service could not be asked.
    static func show(options: CtlOptions) async throws {
        let view = await self.view(options: options)
        if options.json {
            for line in try view.jsonLines() { Swift.print(line) }
        } else {
            Swift.print(view.text(), terminator: "")
        }
        if let failure = view.failures.first { throw CtlError(description: failure) }
    }

    /// Asks the producer and each consumer group, all at once: a service that does not answer
    /// costs the view one `--call-timeout`, not one each. A service that cannot be asked is
    /// part of the view.
    static func view(options: CtlOptions) async -> StatusView {
        async let producer = Self.producerLine(options: options)
        let addresses = [try? options.userRPCAddress, try? options.orgRPCAddress].compactMap { $0 }
        let groups = await withTaskGroup(of: (Int, StatusView.GroupStatus).self) { tasks in
            for (index, address) in addresses.enumerated() {
                tasks.addTask {
                    do {
                        let status = try await options.withClient(address) { client in
                            try await Entitysync_V1_SyncInfo.Client(wrapping: client).getSyncStatus(Entitysync_V1_GetSyncStatusRequest())
                        }
                        return (index, .init(address: address, outcome: .success(status)))
                    } catch {
                        return (index, .init(address: address, outcome: .failure(CtlError(description: "\(error)"))))
                    }
                }
            }
            var answered: [(Int, StatusView.GroupStatus)] = []
            for await answer in tasks { answered.append(answer) }
            return answered.sorted { $0.0 < $1.0 }.map(\.1)
        }
        var view = StatusView()
        view.producer = await producer
        view.groups = groups
        return view
    }

    private static func producerLine(options: CtlOptions) async -> StatusView.ProducerLine {
        do {
            let producer = try options.producerAddress
            let outbox = try await options.withClient(producer) { client in
                try await Entitysync_V1_EntityAdmin.Client(wrapping: client).getOutboxStatus(Entitysync_V1_GetOutboxStatusRequest())
            }
            return .outbox(address: producer, pending: outbox.pendingEvents)
        } catch {
            // The consumer groups' view is still worth showing without the producer.
            return .failed("\(error)")
        }
    }
}
