import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import GRPCCore

/// The producer's admin API over its source store. Mutations return the entity with its new
/// version; their events reach the consumer groups through the outbox.
struct EntityAdminService: Entitysync_V1_EntityAdmin.SimpleServiceProtocol {
    let store: any SourceStore

    /// The mutating methods, which need the bearer token when one is configured.
    static let mutations: Set<MethodDescriptor> = [
        Entitysync_V1_EntityAdmin.Method.CreateUser.descriptor,
        Entitysync_V1_EntityAdmin.Method.UpdateUser.descriptor,
        Entitysync_V1_EntityAdmin.Method.DeleteUser.descriptor,
        Entitysync_V1_EntityAdmin.Method.CreateGroup.descriptor,
        Entitysync_V1_EntityAdmin.Method.UpdateGroup.descriptor,
        Entitysync_V1_EntityAdmin.Method.DeleteGroup.descriptor,
        Entitysync_V1_EntityAdmin.Method.AddGroupMembers.descriptor,
        Entitysync_V1_EntityAdmin.Method.RemoveGroupMembers.descriptor,
    ]

    func createUser(request: Entitysync_V1_CreateUserRequest, context: ServerContext) async throws -> User {
        try await self.createUser(request)
    }

    func createUser(_ request: Entitysync_V1_CreateUserRequest) async throws -> User {
        guard request.hasUser else { throw RPCErrors.invalid("user is required") }
        return try await RPCErrors.mapping { try await self.store.createUser(Self.draft(request.user)) }
    }

    func updateUser(request: Entitysync_V1_UpdateUserRequest, context: ServerContext) async throws -> User {
        try await self.updateUser(request)
    }

    func updateUser(_ request: Entitysync_V1_UpdateUserRequest) async throws -> User {
        guard request.hasUser else { throw RPCErrors.invalid("user is required") }
        return try await RPCErrors.mapping {
            try await self.store.updateUser(Self.draft(request.user), expectedVersion: Self.expected(request.expectedVersion))
        }
    }

    func deleteUser(request: Entitysync_V1_DeleteRequest, context: ServerContext) async throws -> Entitysync_V1_DeleteResponse {
        try await self.deleteUser(request)
    }

    func deleteUser(_ request: Entitysync_V1_DeleteRequest) async throws -> Entitysync_V1_DeleteResponse {
        try await RPCErrors.mapping {
            var response = Entitysync_V1_DeleteResponse()
            response.id = request.id
            response.version = try await self.store.deleteUser(id: request.id, expectedVersion: Self.expected(request.expectedVersion))
            return response
        }
    }

    func getUser(request: Entitysync_V1_GetRequest, context: ServerContext) async throws -> User {
        try await self.getUser(request)
    }

    func getUser(_ request: Entitysync_V1_GetRequest) async throws -> User {
        try await RPCErrors.mapping {
            try DraftValidation.validateID(request.id, field: "id")
            guard let user = try await self.store.user(id: request.id) else {
                throw SyncError(.notFound, "user '\(request.id)' does not exist")
            }
            return user
        }
    }

    func listUsers(request: Entitysync_V1_ListRequest, context: ServerContext) async throws -> Entitysync_V1_ListUsersResponse {
        try await Page.users(size: request.pageSize, token: request.pageToken) {
            try await self.store.listUsers(after: $0, limit: $1)
        }
    }

    func createGroup(request: Entitysync_V1_CreateGroupRequest, context: ServerContext) async throws -> Group {
        try await self.createGroup(request)
    }

    func createGroup(_ request: Entitysync_V1_CreateGroupRequest) async throws -> Group {
        guard request.hasGroup else { throw RPCErrors.invalid("group is required") }
        return try await RPCErrors.mapping { try await self.store.createGroup(Self.draft(request.group)) }
    }

    func updateGroup(request: Entitysync_V1_UpdateGroupRequest, context: ServerContext) async throws -> Group {
        try await self.updateGroup(request)
    }

    func updateGroup(_ request: Entitysync_V1_UpdateGroupRequest) async throws -> Group {
        guard request.hasGroup else { throw RPCErrors.invalid("group is required") }
        return try await RPCErrors.mapping {
            try await self.store.updateGroup(Self.draft(request.group), expectedVersion: Self.expected(request.expectedVersion))
        }
    }

    func deleteGroup(request: Entitysync_V1_DeleteRequest, context: ServerContext) async throws -> Entitysync_V1_DeleteResponse {
        try await self.deleteGroup(request)
    }

    func deleteGroup(_ request: Entitysync_V1_DeleteRequest) async throws -> Entitysync_V1_DeleteResponse {
        try await RPCErrors.mapping {
            var response = Entitysync_V1_DeleteResponse()
            response.id = request.id
            response.version = try await self.store.deleteGroup(id: request.id, expectedVersion: Self.expected(request.expectedVersion))
            return response
        }
    }

    func getGroup(request: Entitysync_V1_GetRequest, context: ServerContext) async throws -> Group {
        try await self.getGroup(request)
    }

    func getGroup(_ request: Entitysync_V1_GetRequest) async throws -> Group {
        try await RPCErrors.mapping {
            try DraftValidation.validateID(request.id, field: "id")
            guard let group = try await self.store.group(id: request.id) else {
                throw SyncError(.notFound, "group '\(request.id)' does not exist")
            }
            return group
        }
    }

    func listGroups(request: Entitysync_V1_ListRequest, context: ServerContext) async throws -> Entitysync_V1_ListGroupsResponse {
        try await Page.groups(size: request.pageSize, token: request.pageToken) {
            try await self.store.listGroups(after: $0, limit: $1)
        }
    }

    func addGroupMembers(request: Entitysync_V1_GroupMembersRequest, context: ServerContext) async throws -> Group {
        try await self.addGroupMembers(request)
    }

    func addGroupMembers(_ request: Entitysync_V1_GroupMembersRequest) async throws -> Group {
        try await RPCErrors.mapping {
            try await self.store.addGroupMembers(groupID: request.groupID, userIDs: request.userIds,
                                                 expectedVersion: Self.expected(request.expectedVersion))
        }
    }

    func removeGroupMembers(request: Entitysync_V1_GroupMembersRequest, context: ServerContext) async throws -> Group {
        try await self.removeGroupMembers(request)
    }

    func removeGroupMembers(_ request: Entitysync_V1_GroupMembersRequest) async throws -> Group {
        try await RPCErrors.mapping {
            try await self.store.removeGroupMembers(groupID: request.groupID, userIDs: request.userIds,
                                                    expectedVersion: Self.expected(request.expectedVersion))
        }
    }

    private static let snapshotPage = 100

    func snapshot(request: Entitysync_V1_SnapshotRequest, response: RPCWriter<EntityChange>, context: ServerContext) async throws {
        try await RPCErrors.mapping {
            for kind in EntityKind.allCases {
                var after: String?
                while true {
                    // A page is what a stream to a client that stopped reading holds while it
                    // waits: small, as entities may be up to hundreds of kilobytes.
                    let page = try await self.store.snapshot(of: kind, after: after, limit: Self.snapshotPage)
                    for change in page { try await response.write(change) }
                    guard page.count == Self.snapshotPage, let last = page.last else { break }
                    after = last.entityID
                }
            }
        }
    }

    func getOutboxStatus(request: Entitysync_V1_GetOutboxStatusRequest, context: ServerContext) async throws -> Entitysync_V1_OutboxStatus {
        try await RPCErrors.mapping {
            var status = Entitysync_V1_OutboxStatus()
            status.pendingEvents = UInt64(try await self.store.outboxCount())
            return status
        }
    }

    static func expected(_ version: UInt64) -> UInt64? { version == 0 ? nil : version }

    static func draft(_ user: User) -> UserDraft {
        UserDraft(id: user.id, name: user.name, email: user.email,
                  status: user.status == .unspecified ? .active : user.status, attributes: user.attributes)
    }

    static func draft(_ group: Group) -> GroupDraft {
        GroupDraft(id: group.id, name: group.name, description: group.description_p, memberIDs: group.memberIds)
    }
}
