import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import EntitySyncTestSupport
import Foundation
import GRPCCore
import Testing

@Suite(.enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct EndToEndTests {
    /// Changes made through EntityAdmin over HTTP/2 are readable from every instance of both
    /// consumer groups once WaitForVersion says they arrived.
    @Test func changesReachEveryInstanceOfBothGroups() async throws {
        let system = try await RunningSystem.start("e2e")
        let producerPort = try await system.producer.address.port()
        let metadata = system.authorized
        let (group, deletedVersion) = try await system.withClient(producerPort) { client in
            let admin = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            for id in ["ada", "bob", "cyd"] { _ = try await admin.createUser(userRequest(id), metadata: metadata) }
            var update = Entitysync_V1_UpdateUserRequest()
            update.user = userRequest("ada", name: "Ada Lovelace").user
            update.expectedVersion = 1
            let updated = try await admin.updateUser(update, metadata: metadata)
            #expect(updated.version == 2 && updated.name == "Ada Lovelace")
            var create = Entitysync_V1_CreateGroupRequest()
            create.group.id = "eng"
            create.group.name = "Engineering"
            create.group.memberIds = ["ada", "bob"]
            _ = try await admin.createGroup(create, metadata: metadata)
            var add = Entitysync_V1_GroupMembersRequest()
            add.groupID = "eng"
            add.userIds = ["cyd"]
            let group = try await admin.addGroupMembers(add, metadata: metadata)
            #expect(group.version == 2 && group.memberIds == ["ada", "bob", "cyd"])
            var delete = Entitysync_V1_DeleteRequest()
            delete.id = "bob"
            let deleted = try await admin.deleteUser(delete, metadata: metadata)
            return (try await admin.getGroup({ var r = Entitysync_V1_GetRequest(); r.id = "eng"; return r }()), deleted.version)
        }
        #expect(group.memberIds == ["ada", "cyd"] && group.version == 3, "deleting bob removes him from eng")

        for instance in system.userRPC {
            let port = try await instance.address.port()
            try await system.withClient(port) { client in
                let info = Entitysync_V1_SyncInfo.Client(wrapping: client)
                _ = try await info.waitForVersion(waitRequest(.group, "eng", 3))
                let gone = try await info.waitForVersion(waitRequest(.user, "bob", deletedVersion))
                #expect(gone.deleted)
                let query = Entitysync_V1_UserQuery.Client(wrapping: client)
                var get = Entitysync_V1_GetRequest()
                get.id = "ada"
                let ada = try await query.getUser(get)
                #expect(ada.user.name == "Ada Lovelace" && ada.user.version == 2)
                #expect(ada.groups.map(\.id) == ["eng"])
                var batch = Entitysync_V1_BatchGetUsersRequest()
                batch.ids = ["cyd", "bob", "nobody", "ada"]
                let found = try await query.batchGetUsers(batch)
                #expect(found.users.map(\.id) == ["cyd", "ada"])
                #expect(found.missingIds == ["bob", "nobody"])
                // Paging: two pages of one and one.
                var list = Entitysync_V1_ListRequest()
                list.pageSize = 1
                let first = try await query.listUsers(list)
                #expect(first.users.map(\.id) == ["ada"] && !first.nextPageToken.isEmpty)
                list.pageToken = first.nextPageToken
                let second = try await query.listUsers(list)
                #expect(second.users.map(\.id) == ["cyd"] && second.nextPageToken.isEmpty)
                var groups = Entitysync_V1_ListUserGroupsRequest()
                groups.userID = "cyd"
                let userGroups = try await query.listUserGroups(groups).groups.map(\.id)
                #expect(userGroups == ["eng"])
            }
        }
        for instance in system.orgRPC {
            let port = try await instance.address.port()
            try await system.withClient(port) { client in
                _ = try await Entitysync_V1_SyncInfo.Client(wrapping: client).waitForVersion(waitRequest(.group, "eng", 3))
                let query = Entitysync_V1_OrgQuery.Client(wrapping: client)
                var get = Entitysync_V1_GetRequest()
                get.id = "eng"
                let eng = try await query.getGroup(get)
                #expect(eng.group.memberIds == ["ada", "cyd"])
                #expect(eng.members.map(\.id) == ["ada", "cyd"])
                #expect(eng.members.first?.name == "Ada Lovelace")
                var members = Entitysync_V1_ListGroupMembersRequest()
                members.groupID = "eng"
                let memberIDs = try await query.listGroupMembers(members).users.map(\.id)
                #expect(memberIDs == ["ada", "cyd"])
                let status = try await Entitysync_V1_SyncInfo.Client(wrapping: client).getSyncStatus(Entitysync_V1_GetSyncStatusRequest())
                #expect(status.consumerGroup == "consumer_org_rpc")
                #expect(status.queues.count == 2 && status.queues.allSatisfy { $0.consumers == 2 })
                let users = status.entities.first { $0.entityType == .user }
                #expect(users?.entitiesHeld == 2 && users?.highestVersion == 2)
            }
        }
        try await system.stop()
    }

    /// The status codes a gRPC user expects, and bearer-token authentication on mutations.
    @Test func statusCodesAndAuthentication() async throws {
        let system = try await RunningSystem.start("codes")
        let producerPort = try await system.producer.address.port()
        let userPort = try await system.userRPC[0].address.port()
        let metadata = system.authorized
        try await system.withClient(producerPort) { client in
            let admin = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            _ = try await admin.createUser(userRequest("ada"), metadata: metadata)

            #expect(await statusCode { _ = try await admin.createUser(userRequest(""), metadata: metadata) } == .invalidArgument)
            #expect(await statusCode { _ = try await admin.createUser(userRequest("x", email: "not-an-email"), metadata: metadata) } == .invalidArgument)
            #expect(await statusCode { _ = try await admin.createUser(Entitysync_V1_CreateUserRequest(), metadata: metadata) } == .invalidArgument)
            #expect(await statusCode { _ = try await admin.createUser(userRequest("ada"), metadata: metadata) } == .alreadyExists)
            var stale = Entitysync_V1_UpdateUserRequest()
            stale.user = userRequest("ada").user
            stale.expectedVersion = 7
            #expect(await statusCode { _ = try await admin.updateUser(stale, metadata: metadata) } == .aborted)
            var missing = Entitysync_V1_GetRequest()
            missing.id = "nobody"
            #expect(await statusCode { _ = try await admin.getUser(missing) } == .notFound)
            var tooBig = Entitysync_V1_ListRequest()
            tooBig.pageSize = 5000
            #expect(await statusCode { _ = try await admin.listUsers(tooBig) } == .invalidArgument)
            var badToken = Entitysync_V1_ListRequest()
            badToken.pageToken = "%%%"
            #expect(await statusCode { _ = try await admin.listUsers(badToken) } == .invalidArgument)

            // Mutations without, with a malformed and with a wrong token change nothing.
            var wrong = Metadata()
            wrong.addString("Bearer nope", forKey: "authorization")
            var malformed = Metadata()
            malformed.addString(RunningSystem.token, forKey: "authorization")
            for attempt in [Metadata(), wrong, malformed] {
                #expect(await statusCode { _ = try await admin.createUser(userRequest("mallory"), metadata: attempt) } == .unauthenticated)
                var delete = Entitysync_V1_DeleteRequest()
                delete.id = "ada"
                #expect(await statusCode { _ = try await admin.deleteUser(delete, metadata: attempt) } == .unauthenticated)
            }
            var getAda = Entitysync_V1_GetRequest()
            getAda.id = "ada"
            let version = try await admin.getUser(getAda).version
            #expect(version == 1, "reads are open and nothing changed")
            var getMallory = Entitysync_V1_GetRequest()
            getMallory.id = "mallory"
            let request = getMallory
            #expect(await statusCode { _ = try await admin.getUser(request) } == .notFound)
        }
        try await system.withClient(userPort) { client in
            let info = Entitysync_V1_SyncInfo.Client(wrapping: client)
            #expect(await statusCode { _ = try await info.waitForVersion(waitRequest(.user, "ada", 99, timeoutMs: 200)) } == .deadlineExceeded)
            #expect(await statusCode { _ = try await info.waitForVersion(waitRequest(.unspecified, "ada", 1)) } == .invalidArgument)
            var batch = Entitysync_V1_BatchGetUsersRequest()
            batch.ids = Array(repeating: "a", count: 1001)
            #expect(await statusCode { _ = try await Entitysync_V1_UserQuery.Client(wrapping: client).batchGetUsers(batch) } == .invalidArgument)
            let health = Grpc_Health_V1_Health.Client(wrapping: client)
            let overall = try await health.check(Grpc_Health_V1_HealthCheckRequest()).status
            #expect(overall == .serving)
            var named = Grpc_Health_V1_HealthCheckRequest()
            named.service = "entitysync.v1.UserQuery"
            let service = try await health.check(named).status
            #expect(service == .serving)
            var unknown = Grpc_Health_V1_HealthCheckRequest()
            unknown.service = "no.such.Service"
            let unknownRequest = unknown
            #expect(await statusCode { _ = try await health.check(unknownRequest) } == .notFound)
        }
        try await system.stop()
    }
}
