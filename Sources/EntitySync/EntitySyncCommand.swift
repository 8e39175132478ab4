import ArgumentParser

@main
struct EntitySyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "entity-sync",
        abstract: "Keep user and group entities in sync between services over RabbitMQ.",
        discussion: """
            Every option can also be set through the environment variable named in its help; a flag \
            wins over the environment.
            """,
        subcommands: [Producer.self, UserRPC.self, OrgRPC.self, Topology.self, Ctl.self, Check.self]
    )
}
