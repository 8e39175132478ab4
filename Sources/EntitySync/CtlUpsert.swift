import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import GRPCCore
import GRPCNIOTransportHTTP2

/// Create-or-update through the admin API, for commands that load a desired state (demo, import).
enum Upsert {
    typealias Admin = Entitysync_V1_EntityAdmin.Client<HTTP2ClientTransport.Posix>

    /// Creates the user, or updates it to this state if it exists; returns it and whether it was new.
    static func user(_ user: User, admin: Admin, metadata: Metadata) async throws -> (user: User, created: Bool) {
        do {
            var request = Entitysync_V1_CreateUserRequest()
            request.user = user
            return (try await admin.createUser(request, metadata: metadata), true)
        } catch let error as RPCError where error.code == .alreadyExists {
            var request = Entitysync_V1_UpdateUserRequest()
            request.user = user
            return (try await admin.updateUser(request, metadata: metadata), false)
        }
    }

    /// Creates the group, or updates it to this state if it exists; returns it and whether it was new.
    static func group(_ group: Group, admin: Admin, metadata: Metadata) async throws -> (group: Group, created: Bool) {
        do {
            var request = Entitysync_V1_CreateGroupRequest()
            request.group = group
            return (try await admin.createGroup(request, metadata: metadata), true)
        } catch let error as RPCError where error.code == .alreadyExists {
            var request = Entitysync_V1_UpdateGroupRequest()
            request.group = group
            return (try await admin.updateGroup(request, metadata: metadata), false)
        }
    }
}
