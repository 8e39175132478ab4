import ArgumentParser
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import GRPCCore

struct DeadLetters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq", abstract: "Inspect and re-drive a consumer group's dead-letter queues.",
        subcommands: [List.self, Redrive.self])

    struct Target: ParsableArguments {
        @Option(help: "Which consumer service: user-rpc, org-rpc, or all.") var service: String = "all"
        @Option(help: "Entity type: user, group, or all.") var type: String = "all"

        func services(_ options: CtlOptions) throws -> [(String, HostPort)] {
            switch self.service {
            case "user-rpc": return [("user-rpc", try options.userRPCAddress)]
            case "org-rpc": return [("org-rpc", try options.orgRPCAddress)]
            case "all": return [("user-rpc", try options.userRPCAddress), ("org-rpc", try options.orgRPCAddress)]
            default: throw ValidationError("--service must be user-rpc, org-rpc or all, not '\(self.service)'")
            }
        }

        var entityType: Entitysync_V1_EntityType {
            get throws {
                switch self.type {
                case "user": return .user
                case "group": return .group
                case "all": return .unspecified
                default: throw ValidationError("--type must be user, group or all, not '\(self.type)'")
                }
            }
        }
    }

    static func render(_ letters: [Entitysync_V1_DeadLetter]) -> String {
        Table.render(header: ["queue", "entity", "id", "version", "message id", "bytes", "reason"], rows: letters.map {
            [$0.queue, $0.entityType == .user ? "user" : "group", $0.entityID.isEmpty ? "?" : $0.entityID,
             $0.version == 0 ? "?" : "\($0.version)", $0.messageID, "\($0.sizeBytes)", $0.reason]
        })
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "List dead-lettered events (oldest first); they stay in place.",
            discussion: "Needs the token when the service has one: listing takes the events off their queue for a moment.")
        @OptionGroup var options: CtlOptions
        @OptionGroup var target: Target
        @Option(help: "At most this many per service (1 to 1000).") var limit: UInt32 = 100

        func run() async throws {
            var request = Entitysync_V1_ListDeadLettersRequest()
            request.entityType = try self.target.entityType
            request.limit = self.limit
            let sent = request
            let metadata = self.options.metadata
            for (name, address) in try self.target.services(self.options) {
                let response = try await self.options.withClient(address) { client in
                    try await Entitysync_V1_SyncInfo.Client(wrapping: client).listDeadLetters(sent, metadata: metadata)
                }
                try self.options.print(response) {
                    "\(name) at \(address): \(response.total) dead-lettered event(s)"
                        + (response.deadLetters.isEmpty ? "\n" : "\n" + DeadLetters.render(response.deadLetters) + "\n")
                }
            }
        }
    }

    struct Redrive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "redrive",
            abstract: "Apply dead-lettered events again through the normal apply path; report applied, stale and failed.",
            discussion: """
                Each event is applied under the version rule, so a re-drive never rolls an entity back: \
                events older than what the group holds are counted as stale and dropped. Events that fail \
                again go back to the dead-letter queue with the new reason. Needs the token when the \
                service has one.
                """)
        @OptionGroup var options: CtlOptions
        @OptionGroup var target: Target
        @Option(help: "At most this many per service (0: all there are now).") var limit: UInt32 = 0

        func run() async throws {
            var request = Entitysync_V1_RedriveDeadLettersRequest()
            request.entityType = try self.target.entityType
            request.limit = self.limit
            let sent = request
            let metadata = self.options.metadata
            var failed: UInt64 = 0
            for (name, address) in try self.target.services(self.options) {
                // A redrive applies up to --limit events (all with 0), each through the consumer's
                // store: no deadline, however many there are.
                let response = try await self.options.withClient(address, waits: nil) { client in
                    try await Entitysync_V1_SyncInfo.Client(wrapping: client).redriveDeadLetters(sent, metadata: metadata)
                }
                failed += response.failed
                try self.options.print(response) {
                    "\(name) at \(address): \(response.applied) applied, \(response.stale) skipped as stale, \(response.failed) failed again"
                        + (response.failures.isEmpty ? "\n" : "\n" + DeadLetters.render(response.failures) + "\n")
                }
            }
            if failed > 0 { throw CtlError(description: "\(failed) event(s) failed again and are back in the dead-letter queue") }
        }
    }
}
