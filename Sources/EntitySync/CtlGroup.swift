import ArgumentParser
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import SwiftProtobuf

struct GroupCommands: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "group", abstract: "Groups.",
                                                    subcommands: [Create.self, Get.self, List.self, AddMembers.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a group (on the producer).")
        @OptionGroup var options: CtlOptions
        @Option var id: String
        @Option var name: String
        @Option var description: String = ""
        @Option(help: "A member user id (repeatable).") var member: [String] = []

        func run() async throws {
            var request = Entitysync_V1_CreateGroupRequest()
            request.group.id = self.id
            request.group.name = self.name
            request.group.description_p = self.description
            request.group.memberIds = self.member
            let metadata = self.options.metadata
            let sent = request
            let group = try await self.options.withClient(try self.options.producerAddress) { client in
                try await Entitysync_V1_EntityAdmin.Client(wrapping: client).createGroup(sent, metadata: metadata)
            }
            try self.options.print(group) { EntityTables.groups([group]) }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "get", abstract: "Show a group (from org-rpc by default, with its members).")
        @OptionGroup var options: CtlOptions
        @Argument var id: String
        @Option(help: "Where to read: producer or org-rpc.") var from: ReadTarget = .orgRPC

        func run() async throws {
            var request = Entitysync_V1_GetRequest()
            request.id = self.id
            if self.from == .producer {
                let sent = request
                let group = try await self.options.withClient(try self.options.producerAddress) { client in
                    try await Entitysync_V1_EntityAdmin.Client(wrapping: client).getGroup(sent)
                }
                try self.options.print(group) { EntityTables.groups([group]) }
            } else {
                let sent = request
                let found = try await self.options.withClient(try self.options.orgRPCAddress) { client in
                    try await Entitysync_V1_OrgQuery.Client(wrapping: client).getGroup(sent)
                }
                try self.options.print(found) { EntityTables.groups([found.group]) + "\n\nmembers:\n" + EntityTables.users(found.members) }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List groups (one page).")
        @OptionGroup var options: CtlOptions
        @Option(help: "Where to read: producer or org-rpc.") var from: ReadTarget = .orgRPC
        @Option var pageSize: Int32 = 100
        @Option var pageToken: String = ""

        func run() async throws {
            var request = Entitysync_V1_ListRequest()
            request.pageSize = self.pageSize
            request.pageToken = self.pageToken
            let from = self.from
            let address = from == .producer ? try self.options.producerAddress : try self.options.orgRPCAddress
            let sent = request
            let response = try await self.options.withClient(address) { client in
                from == .producer
                    ? try await Entitysync_V1_EntityAdmin.Client(wrapping: client).listGroups(sent)
                    : try await Entitysync_V1_OrgQuery.Client(wrapping: client).listGroups(sent)
            }
            try self.options.print(response) {
                EntityTables.groups(response.groups) + (response.nextPageToken.isEmpty ? "" : "\nnext page: --page-token \(response.nextPageToken)")
            }
        }
    }

    struct AddMembers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "add-members", abstract: "Add users to a group (on the producer).")
        @OptionGroup var options: CtlOptions
        @Argument var group: String
        @Argument var users: [String]

        func run() async throws {
            var request = Entitysync_V1_GroupMembersRequest()
            request.groupID = self.group
            request.userIds = self.users
            let metadata = self.options.metadata
            let sent = request
            let group = try await self.options.withClient(try self.options.producerAddress) { client in
                try await Entitysync_V1_EntityAdmin.Client(wrapping: client).addGroupMembers(sent, metadata: metadata)
            }
            try self.options.print(group) { EntityTables.groups([group]) }
        }
    }
}
