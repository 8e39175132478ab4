import ArgumentParser

struct Ctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "A client for people: create, read and list users and groups, and show sync status.",
        subcommands: [UserCommands.self, GroupCommands.self, Status.self, Wait.self, Health.self, Demo.self,
                      Import.self, DeadLetters.self])
}
