import ArgumentParser
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import SwiftProtobuf

struct Ctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A client for people: create, read and list users and groups, and show sync status.",
        subcommands: [UserCommands.self, GroupCommands.self, Status.self, Wait.self, Health.self, Demo.self,
                      Import.self, DeadLetters.self])
}

struct CtlOptions: ParsableArguments {
    @Option(help: "Producer address (env: ENTITY_SYNC_PRODUCER; default: 127.0.0.1:50051).")
    var producer: String?
    @Option(help: "A user-rpc address (env: ENTITY_SYNC_USER_RPC; default: 127.0.0.1:50052).")
    var userRPC: String?
    @Option(help: "An org-rpc address (env: ENTITY_SYNC_ORG_RPC; default: 127.0.0.1:50053).")
    var orgRPC: String?
    @Option(help: "Bearer token for mutations (env: ENTITY_SYNC_TOKEN).")
    var token: String?
    @Flag(help: "Print JSON instead of tables.")
    var json = false

    func address(_ flag: String?, _ variable: String, _ fallback: String) throws -> HostPort {
        try HostPort(setting(flag, variable, fallback))
    }

    var producerAddress: HostPort { get throws { try self.address(self.producer, "ENTITY_SYNC_PRODUCER", "127.0.0.1:50051") } }
    var userRPCAddress: HostPort { get throws { try self.address(self.userRPC, "ENTITY_SYNC_USER_RPC", "127.0.0.1:50052") } }
    var orgRPCAddress: HostPort { get throws { try self.address(self.orgRPC, "ENTITY_SYNC_ORG_RPC", "127.0.0.1:50053") } }

    var metadata: Metadata {
        var metadata = Metadata()
        if let token = optionalSetting(self.token, "ENTITY_SYNC_TOKEN") { metadata.addString("Bearer \(token)", forKey: "authorization") }
        return metadata
    }

    /// Runs `body` with a client connected to `address`; RPC failures print their status and message.
    func withClient<T: Sendable>(_ address: HostPort, _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        do {
            return try await withGRPCClient(transport: .http2NIOPosix(target: .dns(host: address.host, port: address.port),
                                                                       transportSecurity: .plaintext)) { client in
                try await body(client)
            }
        } catch let error as RPCError where error.code == .unavailable {
            throw CtlError(description: "could not reach \(address) (\(error.message)). Is the service running there? "
                           + "scripts/run starts them all; --producer, --user-rpc and --org-rpc point ctl elsewhere")
        } catch let error as RPCError {
            throw CtlError(description: "\(address) answered \(error.code): \(error.message)")
        }
    }

    func print(_ message: some SwiftProtobuf.Message, table: () -> String) throws {
        try self.print([message], table: table)
    }

    /// With --json, one JSON object per line; otherwise the table.
    func print(_ messages: [some SwiftProtobuf.Message], table: () -> String) throws {
        if self.json {
            for message in messages { Swift.print(try message.jsonString()) }
        } else {
            Swift.print(table())
        }
    }
}

/// A failed call, printed as "Error: …" with exit status 1.
struct CtlError: Error, CustomStringConvertible {
    var description: String
}

enum Render {
    static func users(_ users: [User]) -> String {
        Table.render(header: ["id", "name", "email", "status", "version"], rows: users.map {
            [$0.id, $0.name, $0.email, $0.status == .disabled ? "disabled" : "active", "\($0.version)"]
        })
    }

    static func groups(_ groups: [Group]) -> String {
        Table.render(header: ["id", "name", "members", "version"], rows: groups.map {
            [$0.id, $0.name, $0.memberIds.joined(separator: ","), "\($0.version)"]
        })
    }
}

enum Source: String, ExpressibleByArgument, CaseIterable {
    case producer
    case userRPC = "user-rpc"
    case orgRPC = "org-rpc"
}

struct UserCommands: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "user", abstract: "Users.",
                                                    subcommands: [Create.self, Get.self, List.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a user (on the producer).")
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
            try self.options.print(user) { Render.users([user]) }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a user (from user-rpc by default, with its groups).")
        @OptionGroup var options: CtlOptions
        @Argument var id: String
        @Option(help: "Where to read: producer or user-rpc.") var from: Source = .userRPC

        func run() async throws {
            var request = Entitysync_V1_GetRequest()
            request.id = self.id
            if self.from == .producer {
                let sent = request
                let user = try await self.options.withClient(try self.options.producerAddress) { client in
                    try await Entitysync_V1_EntityAdmin.Client(wrapping: client).getUser(sent)
                }
                try self.options.print(user) { Render.users([user]) }
            } else {
                let sent = request
                let found = try await self.options.withClient(try self.options.userRPCAddress) { client in
                    try await Entitysync_V1_UserQuery.Client(wrapping: client).getUser(sent)
                }
                try self.options.print(found) {
                    Render.users([found.user]) + "\n\ngroups:\n" + Render.groups(found.groups)
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List users (one page).")
        @OptionGroup var options: CtlOptions
        @Option(help: "Where to read: producer or user-rpc.") var from: Source = .userRPC
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
                Render.users(response.users) + (response.nextPageToken.isEmpty ? "" : "\nnext page: --page-token \(response.nextPageToken)")
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a user (on the producer).")
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

struct GroupCommands: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "group", abstract: "Groups.",
                                                    subcommands: [Create.self, Get.self, List.self, AddMembers.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a group (on the producer).")
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
            try self.options.print(group) { Render.groups([group]) }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a group (from org-rpc by default, with its members).")
        @OptionGroup var options: CtlOptions
        @Argument var id: String
        @Option(help: "Where to read: producer or org-rpc.") var from: Source = .orgRPC

        func run() async throws {
            var request = Entitysync_V1_GetRequest()
            request.id = self.id
            if self.from == .producer {
                let sent = request
                let group = try await self.options.withClient(try self.options.producerAddress) { client in
                    try await Entitysync_V1_EntityAdmin.Client(wrapping: client).getGroup(sent)
                }
                try self.options.print(group) { Render.groups([group]) }
            } else {
                let sent = request
                let found = try await self.options.withClient(try self.options.orgRPCAddress) { client in
                    try await Entitysync_V1_OrgQuery.Client(wrapping: client).getGroup(sent)
                }
                try self.options.print(found) { Render.groups([found.group]) + "\n\nmembers:\n" + Render.users(found.members) }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List groups (one page).")
        @OptionGroup var options: CtlOptions
        @Option(help: "Where to read: producer or org-rpc.") var from: Source = .orgRPC
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
                Render.groups(response.groups) + (response.nextPageToken.isEmpty ? "" : "\nnext page: --page-token \(response.nextPageToken)")
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
            try self.options.print(group) { Render.groups([group]) }
        }
    }
}
