import EntitySyncCore

/// Users and groups as tables for people.
enum EntityTables {
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
