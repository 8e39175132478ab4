import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import GRPCCore
import HTTP2RPC

/// user-rpc's read API over its group's replica.
struct UserQueryService: Entitysync_V1_UserQuery.SimpleServiceProtocol {
    let store: any ReplicaStore

    func getUser(request: Entitysync_V1_GetRequest, context: ServerContext) async throws -> Entitysync_V1_UserWithGroups {
        try await RPCErrors.mapping {
            try DraftValidation.validateID(request.id, field: "id")
            return try Self.reply(request.id, try await self.store.userWithGroups(id: request.id, groupLimit: Page.maximumSize))
        }
    }

    /// GetUser answered on the server's event loop, for stores that read without waiting
    /// (SQLite): the stored user and groups go out as stored, already serialized.
    /// The calls that arrived in one read from a connection share a read session (one read
    /// transaction for a burst of calls).
    static func immediateGetUser(_ store: any ImmediateReplicaReads) -> @Sendable (Entitysync_V1_GetRequest, ImmediateCall) throws -> [UInt8] {
        let key = ImmediateReadScope.Key()
        return { request, call in
            do {
                try DraftValidation.validateID(request.id, field: "id")
                let session = try call.scope.value(for: key, make: { ReadSessionBox(try store.readSession()) },
                                                   end: { $0.session.end() }).session
                guard let reply = try session.userWithGroupsEncoded(id: request.id, groupLimit: Page.maximumSize) else {
                    throw Self.notFound(request.id)
                }
                return reply
            } catch {
                throw RPCErrors.map(error)
            }
        }
    }

    private static func notFound(_ id: String) -> SyncError {
        SyncError(.notFound, "user '\(id)' does not exist here (yet): if it was just created, "
                  + "wait for its version with SyncInfo.WaitForVersion")
    }

    private static func reply(_ id: String, _ found: UserWithGroups?) throws -> Entitysync_V1_UserWithGroups {
        guard let found else { throw Self.notFound(id) }
        var response = Entitysync_V1_UserWithGroups()
        response.user = found.user
        response.groups = found.groups
        return response
    }

    func batchGetUsers(request: Entitysync_V1_BatchGetUsersRequest, context: ServerContext) async throws -> Entitysync_V1_BatchGetUsersResponse {
        guard request.ids.count <= Page.maximumSize else {
            throw RPCErrors.invalid("ids has \(request.ids.count) entries; ask for at most \(Page.maximumSize) at a time")
        }
        return try await RPCErrors.mapping {
            for id in request.ids { try DraftValidation.validateID(id, field: "ids") }
            let users = try await self.store.users(ids: request.ids)
            let found = Set(users.map(\.id))
            var response = Entitysync_V1_BatchGetUsersResponse()
            response.users = users
            response.missingIds = request.ids.filter { !found.contains($0) }
            return response
        }
    }

    func listUsers(request: Entitysync_V1_ListRequest, context: ServerContext) async throws -> Entitysync_V1_ListUsersResponse {
        try await Page.users(size: request.pageSize, token: request.pageToken) {
            try await self.store.listUsers(after: $0, limit: $1)
        }
    }

    func listUserGroups(request: Entitysync_V1_ListUserGroupsRequest, context: ServerContext) async throws -> Entitysync_V1_ListGroupsResponse {
        try await RPCErrors.mapping { try DraftValidation.validateID(request.userID, field: "user_id") }
        return try await Page.groups(size: request.pageSize, token: request.pageToken) {
            try await self.store.groups(ofUser: request.userID, after: $0, limit: $1)
        }
    }
}

/// A read session kept in an `ImmediateReadScope`, which holds class instances.
private final class ReadSessionBox {
    let session: any ImmediateReadSession

    init(_ session: any ImmediateReadSession) {
        self.session = session
    }
}
