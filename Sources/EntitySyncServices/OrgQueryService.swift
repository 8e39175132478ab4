import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import GRPCCore

/// org-rpc's read API over its group's replica.
struct OrgQueryService: Entitysync_V1_OrgQuery.SimpleServiceProtocol {
    let store: any ReplicaStore

    func getGroup(request: Entitysync_V1_GetRequest, context: ServerContext) async throws -> Entitysync_V1_GroupWithMembers {
        try await RPCErrors.mapping {
            try DraftValidation.validateID(request.id, field: "id")
            guard let group = try await self.store.group(id: request.id) else {
                throw SyncError(.notFound, "group '\(request.id)' does not exist here (yet): if it was just created, "
                                + "wait for its version with SyncInfo.WaitForVersion")
            }
            var response = Entitysync_V1_GroupWithMembers()
            response.group = group
            response.members = try await self.store.users(ids: group.memberIds)
            return response
        }
    }

    func listGroups(request: Entitysync_V1_ListRequest, context: ServerContext) async throws -> Entitysync_V1_ListGroupsResponse {
        try await Page.groups(size: request.pageSize, token: request.pageToken) {
            try await self.store.listGroups(after: $0, limit: $1)
        }
    }

    func listGroupMembers(request: Entitysync_V1_ListGroupMembersRequest, context: ServerContext) async throws -> Entitysync_V1_ListUsersResponse {
        try await RPCErrors.mapping {
            try DraftValidation.validateID(request.groupID, field: "group_id")
            guard try await self.store.group(id: request.groupID) != nil else {
                throw SyncError(.notFound, "group '\(request.groupID)' does not exist here")
            }
        }
        return try await Page.users(size: request.pageSize, token: request.pageToken) {
            try await self.store.members(ofGroup: request.groupID, after: $0, limit: $1)
        }
    }
}
