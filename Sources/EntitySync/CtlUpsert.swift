import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import HTTP2RPC

/// The admin calls a create-or-update makes, over grpc-swift's client or our libnghttp2 one.
protocol AdminCalls: Sendable {
    func createUser(_ request: Entitysync_V1_CreateUserRequest, metadata: Metadata) async throws -> User
    func updateUser(_ request: Entitysync_V1_UpdateUserRequest, metadata: Metadata) async throws -> User
    func createGroup(_ request: Entitysync_V1_CreateGroupRequest, metadata: Metadata) async throws -> Group
    func updateGroup(_ request: Entitysync_V1_UpdateGroupRequest, metadata: Metadata) async throws -> Group
}

extension Entitysync_V1_EntityAdmin.Client: AdminCalls where Transport == HTTP2ClientTransport.Posix {
    func createUser(_ request: Entitysync_V1_CreateUserRequest, metadata: Metadata) async throws -> User {
        try await self.createUser(request, metadata: metadata, options: .defaults)
    }

    func updateUser(_ request: Entitysync_V1_UpdateUserRequest, metadata: Metadata) async throws -> User {
        try await self.updateUser(request, metadata: metadata, options: .defaults)
    }

    func createGroup(_ request: Entitysync_V1_CreateGroupRequest, metadata: Metadata) async throws -> Group {
        try await self.createGroup(request, metadata: metadata, options: .defaults)
    }

    func updateGroup(_ request: Entitysync_V1_UpdateGroupRequest, metadata: Metadata) async throws -> Group {
        try await self.updateGroup(request, metadata: metadata, options: .defaults)
    }
}

/// The admin calls over `RPCClient`: an import's thousands of small calls cost a fraction of
/// the CPU grpc-swift's client spends on each.
struct NativeAdminCalls: AdminCalls {
    let client: RPCClient

    func createUser(_ request: Entitysync_V1_CreateUserRequest, metadata: Metadata) async throws -> User {
        try await self.client.unary(Entitysync_V1_EntityAdmin.Method.CreateUser.descriptor, request, metadata: Self.headers(metadata))
    }

    func updateUser(_ request: Entitysync_V1_UpdateUserRequest, metadata: Metadata) async throws -> User {
        try await self.client.unary(Entitysync_V1_EntityAdmin.Method.UpdateUser.descriptor, request, metadata: Self.headers(metadata))
    }

    func createGroup(_ request: Entitysync_V1_CreateGroupRequest, metadata: Metadata) async throws -> Group {
        try await self.client.unary(Entitysync_V1_EntityAdmin.Method.CreateGroup.descriptor, request, metadata: Self.headers(metadata))
    }

    func updateGroup(_ request: Entitysync_V1_UpdateGroupRequest, metadata: Metadata) async throws -> Group {
        try await self.client.unary(Entitysync_V1_EntityAdmin.Method.UpdateGroup.descriptor, request, metadata: Self.headers(metadata))
    }

    private static func headers(_ metadata: Metadata) -> [(name: String, value: String)] {
        metadata.map { key, value in
            switch value {
            case .string(let text): (key, text)
            case .binary(let bytes): (key.hasSuffix("-bin") ? key : key + "-bin", Data(bytes).base64EncodedString())
            }
        }
    }
}

/// Create-or-update through the admin API, for commands that load a desired state (demo, import).
enum Upsert {
    /// Creates the user, or updates it to this state if it exists; returns it and whether it was new.
    static func user(_ user: User, admin: any AdminCalls, metadata: Metadata) async throws -> (user: User, created: Bool) {
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
    static func group(_ group: Group, admin: any AdminCalls, metadata: Metadata) async throws -> (group: Group, created: Bool) {
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
