import EntitySyncCore
import Foundation

/// The one place tests build entities and change events.
public enum Fixtures {
    /// A valid user at `version`; its email is `<id>@example.com` unless `email` says otherwise.
    public static func user(_ id: String = "u1", version: UInt64 = 3, name: String = "Ada", email: String? = nil) -> User {
        var user = User()
        user.id = id
        user.name = name
        user.email = email ?? "\(id)@example.com"
        user.status = .active
        user.version = version
        return user
    }

    /// A valid group at `version`.
    public static func group(_ id: String = "g1", version: UInt64 = 3, name: String = "Admins",
                             members: [String] = ["u1", "u2"]) -> Group {
        var group = Group()
        group.id = id
        group.name = name
        group.memberIds = members
        group.version = version
        return group
    }

    /// An upsert of user `id` at `version`. Its message id is `user:<id>:<version>` unless
    /// `messageID` says otherwise.
    public static func userChange(_ id: String = "u1", version: UInt64 = 3, name: String = "Ada", email: String? = nil,
                                  messageID: String? = nil, producer: String = "fixtures") -> EntityChange {
        var change = ChangeEvents.change(kind: .user, id: id, version: version,
                                         state: .user(self.user(id, version: version, name: name, email: email)),
                                         producer: producer)
        if let messageID { change.messageID = messageID }
        return change
    }

    /// An upsert of group `id` at `version`.
    public static func groupChange(_ id: String = "g1", version: UInt64 = 3, members: [String] = ["u1", "u2"],
                                   producer: String = "fixtures") -> EntityChange {
        ChangeEvents.change(kind: .group, id: id, version: version,
                            state: .group(self.group(id, version: version, members: members)), producer: producer)
    }

    /// A deletion of entity `id` of `kind` at `version`.
    public static func deletion(_ kind: EntityKind, _ id: String, version: UInt64, producer: String = "fixtures") -> EntityChange {
        ChangeEvents.change(kind: kind, id: id, version: version, state: nil, producer: producer)
    }

    /// A fresh temporary directory for a test's files; remove it when done.
    public static func temporaryDirectory(_ prefix: String) throws -> String {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("entitysync-\(prefix)-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A path for a SQLite file in a fresh temporary directory, which the store creates.
    public static func temporaryDatabasePath(_ name: String) -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("entitysync-tests-\(UUID().uuidString)")
        return directory.appendingPathComponent("\(name).sqlite").path
    }
}
