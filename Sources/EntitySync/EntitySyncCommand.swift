import ArgumentParser
import EntitySyncSQLite

@main
struct EntitySyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "entity-sync",
        abstract: "Keep user and group entities in sync between services over RabbitMQ.",
        discussion: """
            Every option can also be set through the environment variable named in its help; a flag \
            wins over the environment.
            """,
        subcommands: [Producer.self, UserRPC.self, OrgRPC.self, Topology.self, Ctl.self, CheckCommand.self]
    )

    /// Every command runs in a `CtlSession`, so a ctl command opens one connection per service.
    static func main() async {
        // Before anything opens a database: SQLite takes this only before it starts.
        SQLiteProcess.disableMemoryStatistics()
        do {
            try await CtlSession.run {
                var command = try self.parseAsRoot()
                if var command = command as? any AsyncParsableCommand {
                    try await command.run()
                } else {
                    try command.run()
                }
            }
        } catch {
            self.exit(withError: error)
        }
    }
}
