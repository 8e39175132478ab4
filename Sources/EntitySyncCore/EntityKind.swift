import EntitySyncProto

public typealias User = Entitysync_V1_User
public typealias Group = Entitysync_V1_Group
public typealias EntityChange = Entitysync_V1_EntityChange
public typealias UserStatus = Entitysync_V1_UserStatus

/// The entity types that are kept in sync; the raw value is used in exchange and queue names.
public enum EntityKind: String, Sendable, Hashable, CaseIterable, Comparable {
    case user
    case group

    public init?(_ type: Entitysync_V1_EntityType) {
        switch type {
        case .user: self = .user
        case .group: self = .group
        default: return nil
        }
    }

    public var protoType: Entitysync_V1_EntityType {
        switch self {
        case .user: return .user
        case .group: return .group
        }
    }

    public static func < (lhs: EntityKind, rhs: EntityKind) -> Bool { lhs.rawValue < rhs.rawValue }
}
