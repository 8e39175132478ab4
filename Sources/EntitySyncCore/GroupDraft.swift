import EntitySyncProto
import Foundation

/// The whole new state of a group as a mutation gives it; the store assigns the version.
public struct GroupDraft: Sendable, Equatable {
    public var id: String
    public var name: String
    public var description: String
    public var memberIDs: [String]

    public init(id: String, name: String, description: String = "", memberIDs: [String] = []) {
        self.id = id
        self.name = name
        self.description = description
        self.memberIDs = memberIDs
    }
}
