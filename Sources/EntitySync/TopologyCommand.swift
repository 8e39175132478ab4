import AMQPClient
import ArgumentParser
import EntitySyncCore
import Foundation
import Logging

struct Topology: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topology",
        abstract: "Declare the exchanges and queues, or show them with their depths.",
        subcommands: [Declare.self, Migrate.self, Show.self, Permissions.self], defaultSubcommand: Show.self)

    struct Permissions: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "permissions",
            abstract: "Print the rabbitmqctl lines that give each service only the broker permissions it needs.",
            discussion: "One user per service: the producer may declare and publish to the topology's exchanges and "
                + "queues; each consumer group may only read its own queues and write to its forward exchange. "
                + "Consumers then run with --declare-topology false.")

        @Option(help: "Only this service: producer, or a consumer group such as consumer_user_rpc (default: all).")
        var group: String?

        @Option(help: "Virtual host (default: /).")
        var vhost = "/"

        @Option(help: "User name prefix: users are <prefix>producer, <prefix>user_rpc, ... (default: entitysync_).")
        var userPrefix = "entitysync_"

        func run() throws {
            let topology = SyncTopology()
            var services: [(String, String?)] = [("producer", nil)] + topology.groups.map { ($0, Optional($0)) }
            if let group = self.group {
                services = services.filter { $0.0 == group }
                guard !services.isEmpty else {
                    throw ValidationError("--group must be producer or one of \(topology.groups.joined(separator: ", ")), not '\(group)'")
                }
            }
            for (name, group) in services {
                let user = self.userPrefix + name.replacingOccurrences(of: "consumer_", with: "")
                print("# \(name)")
                print("rabbitmqctl add_user '\(user)' \"$PASSWORD\"  # choose one password per service")
                print(topology.permissions(forGroup: group).command(user: user, vhost: self.vhost))
            }
        }
    }

    struct BrokerOptions: ParsableArguments {
        @Option(help: "Broker URL (env: ENTITY_SYNC_AMQP_URL; default: amqp://guest:guest@127.0.0.1:5672/).")
        var amqpURL: String?

        @Option(help: "Queue type: quorum or classic (env: ENTITY_SYNC_QUEUE_TYPE; default: quorum).")
        var queueType: String?

        func connect() async throws -> (AMQPConnection, SyncTopology) {
            let queueTypeText = setting(self.queueType, "ENTITY_SYNC_QUEUE_TYPE", "quorum")
            guard let queueType = QueueArguments.QueueType(rawValue: queueTypeText), queueType != .stream else {
                throw ValidationError("--queue-type must be quorum or classic")
            }
            var logger = Logger(label: "entity-sync.topology")
            logger.logLevel = .error
            let url = setting(self.amqpURL, "ENTITY_SYNC_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
            let connection = try await AMQPConnection.connect(try AMQPConfiguration(url: url, connectionName: "entity-sync topology"),
                                                              logger: logger)
            return (connection, SyncTopology(queueType: queueType))
        }
    }

    struct Declare: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "declare", abstract: "Declare every exchange and queue (idempotent), as the producer does at startup.")
        @OptionGroup var broker: BrokerOptions

        func run() async throws {
            let (connection, topology) = try await self.broker.connect()
            let declarations = topology.declarations(forGroup: nil)
            do {
                try await declarations.declare(on: connection)
            } catch {
                await connection.close()
                throw error
            }
            await connection.close()
            print("declared \(declarations.exchanges.count) exchanges, \(declarations.queues.count) queues, "
                  + "\(declarations.bindings.count) bindings")
        }
    }

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "migrate",
            abstract: "Re-declare queues an earlier version declared with other arguments, keeping every message.",
            discussion: """
                Queue arguments cannot change once a queue exists. For each queue whose arguments differ, this \
                moves its messages to '<queue>.migrating' (bound like the queue, so nothing published meanwhile \
                is lost), deletes the queue, declares it with the current arguments and moves the messages \
                back, in order. Stop the consumer services first; the producer may keep running. Run it as a \
                broker user that may configure, read and write every queue (not a least-privilege service \
                user). Interrupted, it can simply be run again: it finishes what it started.
                """)
        @OptionGroup var broker: BrokerOptions

        func run() async throws {
            let (connection, topology) = try await self.broker.connect()
            var logger = Logger(label: "entity-sync.topology")
            logger.logLevel = .warning
            let outcomes: [(queue: String, outcome: TopologyMigration.Outcome)]
            do {
                outcomes = try await TopologyMigration(topology: topology, broker: connection, logger: logger).run()
            } catch {
                await connection.close()
                throw error
            }
            await connection.close()
            var changed = 0
            for (queue, outcome) in outcomes {
                switch outcome {
                case .upToDate: continue
                case .migrated(let moved): print("\(queue): declared anew with the current arguments; \(moved) message(s) kept")
                case .resumed(let moved): print("\(queue): finished an interrupted migration; \(moved) message(s) moved back")
                }
                changed += 1
            }
            print("\(outcomes.count) queues checked, \(changed) migrated, \(outcomes.count - changed) already up to date")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show every group's queues with ready messages, consumers, dead letters and retries.")
        @OptionGroup var broker: BrokerOptions
        @Flag(help: "Print JSON instead of a table.") var json = false

        func run() async throws {
            let (connection, topology) = try await self.broker.connect()
            var rows: [[String]] = []
            for group in topology.groups {
                for (kind, queue) in topology.queues(forGroup: group) {
                    let main = try? await connection.queueStatus(queue)
                    let dead = try? await connection.queueStatus(SyncTopology.deadLetterQueue(forQueue: queue))
                    let retry = try? await connection.queueStatus(SyncTopology.retryQueue(forQueue: queue))
                    rows.append([SyncTopology.exchange(for: kind), group, queue,
                                 main.map { "\($0.messageCount)" } ?? "missing", main.map { "\($0.consumerCount)" } ?? "-",
                                 dead.map { "\($0.messageCount)" } ?? "-", retry.map { "\($0.messageCount)" } ?? "-"])
                }
            }
            await connection.close()
            let header = ["exchange", "group", "queue", "ready", "consumers", "dead letters", "retrying"]
            if self.json {
                let objects = rows.map { Dictionary(uniqueKeysWithValues: zip(header, $0)) }
                let data = try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(Table.render(header: header, rows: rows))
            }
        }
    }
}
