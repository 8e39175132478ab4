import ArgumentParser
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import SwiftProtobuf

struct UserCommands: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "user", abstract: "Users.",
                                                    subcommands: [Create.self, Get.self, List.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a user (on the producer).")
        @OptionGroup var options: CtlOptions
        @Option var id: String
        @Option var name: String
        @Option var email: String
        @Flag(help: "Create the user disabled.") var disabled = false
        @Option(help: "An attribute as key=value (repeatable).") var attribute: [String] = []

        func run() async throws {
            var request = Entitysync_V1_CreateUserRequest()
            request.user.id = self.id
            request.user.name = self.name
            request.user.email = self.email
            request.user.status = self.disabled ? .disabled : .active
            for pair in self.attribute {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2 else { throw ValidationError("--attribute takes key=value, not '\(pair)'") }
                request.user.attributes[String(parts[0])] = String(parts[1])
            }
            let metadata = self.options.metadata
            let sent = request
            let user = try await self.options.withClient(try self.options.producerAddress) { client in
                try await Entitysync_V1_EntityAdmin.Client(wrapping: client).createUser(sent, metadata: metadata)
            }
            try self.options.print(user) { EntityTables.users([user]) }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "get", abstract: "Show a user (from user-rpc by default, with its groups).")
        @OptionGroup var options: CtlOptions
        @Argument var id: String
        @Option(help: "Where to read: producer or user-rpc.") var from: ReadTarget = .userRPC

        func run() async throws {
            var request = Entitysync_V1_GetRequest()
            request.id = self.id
            if self.from == .producer {
                let sent = request
                let user = try await self.options.withClient(try self.options.producerAddress) { client in
                    try await Entitysync_V1_EntityAdmin.Client(wrapping: client).getUser(sent)
                }
                try self.options.print(user) { EntityTables.users([user]) }
            } else {
                let sent = request
                let found = try await self.options.withClient(try self.options.userRPCAddress) { client in
                    try await Entitysync_V1_UserQuery.Client(wrapping: client).getUser(sent)
                }
                try self.options.print(found) {
                    EntityTables.users([found.user]) + "\n\ngroups:\n" + EntityTables.groups(found.groups)
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List users (one page).")
        @OptionGroup var options: CtlOptions
        @Option(help: "Where to read: producer or user-rpc.") var from: ReadTarget = .userRPC
        @Option var pageSize: Int32 = 100
        @Option var pageToken: String = ""

        func run() async throws {
            var request = Entitysync_V1_ListRequest()
            request.pageSize = self.pageSize
            request.pageToken = self.pageToken
            let from = self.from
            let address = from == .producer ? try self.options.producerAddress : try self.options.userRPCAddress
            let sent = request
            let response = try await self.options.withClient(address) { client in
                from == .producer
                    ? try await Entitysync_V1_EntityAdmin.Client(wrapping: client).listUsers(sent)
                    : try await Entitysync_V1_UserQuery.Client(wrapping: client).listUsers(sent)
            }
            try self.options.print(response) {
                EntityTables.users(response.users) + (response.nextPageToken.isEmpty ? "" : "\nnext page: --page-token \(response.nextPageToken)")
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a user (on the producer).")
        @OptionGroup var options: CtlOptions
        @Argument var id: String

        func run() async throws {
            var request = Entitysync_V1_DeleteRequest()
            request.id = self.id
            let metadata = self.options.metadata
            let sent = request
            let response = try await self.options.withClient(try self.options.producerAddress) { client in
                try await Entitysync_V1_EntityAdmin.Client(wrapping: client).deleteUser(sent, metadata: metadata)
            }
            try self.options.print(response) { "deleted user \(response.id) (tombstone version \(response.version))" }
        }
    }
}
