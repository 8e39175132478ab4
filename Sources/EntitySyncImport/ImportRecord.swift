import EntitySyncCore
import Foundation

/// One entity read from an import file.
public enum ImportRecord: Sendable, Equatable {
    case user(User)
    case group(Group)

    public var id: String {
        switch self {
        case .user(let user): user.id
        case .group(let group): group.id
        }
    }
}
