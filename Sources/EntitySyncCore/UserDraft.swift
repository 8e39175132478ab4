import EntitySyncProto
import Foundation

/// The whole new state of a user as a mutation gives it; the store assigns the version.
public struct UserDraft: Sendable, Equatable {
    public var id: String
    public var name: String
    public var email: String
    public var status: UserStatus
    public var attributes: [String: String]

    public init(id: String, name: String, email: String, status: UserStatus = .active, attributes: [String: String] = [:]) {
        self.id = id
        self.name = name
        self.email = email
        self.status = status
        self.attributes = attributes
    }
}
