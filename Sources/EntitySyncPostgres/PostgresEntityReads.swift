import EntitySyncCore
import EntitySyncProto

/// The reads both PostgreSQL stores answer the same way, from the entities table.
protocol PostgresEntityReads {
    var database: PostgresDatabase { get }
}

extension PostgresEntityReads {
    public func user(id: String) async throws -> User? {
        try await self.database.read("read a user") { sql in try await PostgresEntityTable.user(sql, id: id) }
    }
    public func group(id: String) async throws -> Group? {
        try await self.database.read("read a group") { sql in try await PostgresEntityTable.group(sql, id: id) }
    }
    public func versions(of kind: EntityKind) async throws -> [String: EntityVersion] {
        try await self.database.read("read versions") { sql in try await PostgresEntityTable.versions(sql, kind: kind) }
    }
    public func listUsers(after: String?, limit: Int) async throws -> [User] {
        try await self.database.read("list users") { sql in try await PostgresEntityTable.users(sql, after: after, limit: limit) }
    }
    public func listGroups(after: String?, limit: Int) async throws -> [Group] {
        try await self.database.read("list groups") { sql in try await PostgresEntityTable.groups(sql, after: after, limit: limit) }
    }
}
