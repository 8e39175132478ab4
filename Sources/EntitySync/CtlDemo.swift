import ArgumentParser
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import GRPCCore

/// A guided tour: a few writes on the producer, read back from both consumer groups.
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "A short guided demo: create users and a group on the producer, read them back from user-rpc and org-rpc.",
        discussion: "Safe to run again: existing demo entities are updated, which gives them new versions.")
    @OptionGroup var options: CtlOptions

    static let people = [("alice", "Alice Liddell"), ("bob", "Bob Marley"), ("carol", "Carol Danvers")]
    static let groupID = "engineering"

    func run() async throws {
        let options = self.options
        let producer = try options.producerAddress, userRPC = try options.userRPCAddress, orgRPC = try options.orgRPCAddress
        let metadata = options.metadata

        step(1, "create users alice, bob and carol on the producer (\(producer))")
        var users: [User] = []
        for (id, name) in Self.people {
            var user = User()
            user.id = id
            user.name = name
            user.email = "\(id)@example.com"
            user.status = .active
            let draft = user
            users.append(try await options.withClient(producer) { client in
                try await Upsert.user(draft, admin: Entitysync_V1_EntityAdmin.Client(wrapping: client), metadata: metadata).user
            })
        }
        try options.print(users) { EntityTables.users(users) }

        step(2, "create group \(Self.groupID) with alice and bob")
        var draft = Group()
        draft.id = Self.groupID
        draft.name = "Engineering"
        draft.description_p = "People who build things"
        draft.memberIds = ["alice", "bob"]
        let groupDraft = draft
        let created = try await options.withClient(producer) { client in
            try await Upsert.group(groupDraft, admin: Entitysync_V1_EntityAdmin.Client(wrapping: client), metadata: metadata).group
        }
        try options.print(created) { EntityTables.groups([created]) }

        step(3, "add carol to \(Self.groupID)")
        var members = Entitysync_V1_GroupMembersRequest()
        members.groupID = Self.groupID
        members.userIds = ["carol"]
        let sentMembers = members
        let group = try await options.withClient(producer) { client in
            try await Entitysync_V1_EntityAdmin.Client(wrapping: client).addGroupMembers(sentMembers, metadata: metadata)
        }
        try options.print(group) { EntityTables.groups([group]) }

        step(4, "wait until user-rpc (\(userRPC)) and org-rpc (\(orgRPC)) have applied these versions")
        for service in [userRPC, orgRPC] {
            for user in users { try await Self.waitFor(.user, user.id, user.version, at: service, options: options) }
            try await Self.waitFor(.group, group.id, group.version, at: service, options: options)
        }
        if !options.json { print("both consumer groups hold user versions \(users.map { "\($0.id)@\($0.version)" }.joined(separator: ", ")) and \(group.id)@\(group.version)") }

        step(5, "read alice from user-rpc, with her groups")
        var get = Entitysync_V1_GetRequest()
        get.id = "alice"
        let sentGet = get
        let alice = try await options.withClient(userRPC) { client in
            try await Entitysync_V1_UserQuery.Client(wrapping: client).getUser(sentGet)
        }
        try options.print(alice) { EntityTables.users([alice.user]) + "\n\ngroups:\n" + EntityTables.groups(alice.groups) }

        step(6, "read \(Self.groupID) from org-rpc, with its members")
        get.id = Self.groupID
        let sentGroupGet = get
        let found = try await options.withClient(orgRPC) { client in
            try await Entitysync_V1_OrgQuery.Client(wrapping: client).getGroup(sentGroupGet)
        }
        try options.print(found) { EntityTables.groups([found.group]) + "\n\nmembers:\n" + EntityTables.users(found.members) }

        step(7, "sync status of user-rpc and org-rpc")
        try await Status.show(options: options)

        func step(_ number: Int, _ text: String) {
            if !options.json { print("\n==> \(number)/7 \(text)") }
        }
    }

    static func waitFor(_ type: Entitysync_V1_EntityType, _ id: String, _ version: UInt64, at address: HostPort,
                        options: CtlOptions) async throws {
        var request = Entitysync_V1_WaitForVersionRequest()
        request.entityType = type
        request.entityID = id
        request.version = version
        request.timeoutMs = 10_000
        let sent = request
        _ = try await options.withClient(address, waits: .milliseconds(Int64(request.timeoutMs))) { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).waitForVersion(sent)
        }
    }
}
