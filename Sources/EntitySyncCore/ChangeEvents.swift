import EntitySyncProto
import Foundation
import SwiftProtobuf

/// How a producer turns a mutation into an entity's new state and its change event. Every
/// source store backend builds them here, so the events a consumer sees do not depend on where
/// the producer keeps its entities.
public enum ChangeEvents {
    /// A user at `version`, from a validated draft.
    public static func user(from draft: UserDraft, version: UInt64, at time: Date = Date()) -> User {
        var user = User()
        user.id = draft.id
        user.name = draft.name
        user.email = draft.email
        user.status = draft.status
        user.attributes = draft.attributes
        user.version = version
        user.updatedAt = Google_Protobuf_Timestamp(date: time)
        return user
    }

    /// A group at `version`, from a validated draft; members sorted and each listed once.
    public static func group(from draft: GroupDraft, version: UInt64, at time: Date = Date()) -> Group {
        var group = Group()
        group.id = draft.id
        group.name = draft.name
        group.description_p = draft.description
        group.memberIds = Array(Set(draft.memberIDs)).sorted()
        group.version = version
        group.updatedAt = Google_Protobuf_Timestamp(date: time)
        return group
    }

    /// `group` with `userIDs` added or removed, at the next version; nil when its members stay
    /// the same (no new version, no event).
    public static func group(_ group: Group, adding: Bool, members userIDs: [String], at time: Date = Date()) -> Group? {
        var members = Set(group.memberIds)
        if adding { members.formUnion(userIDs) } else { members.subtract(userIDs) }
        let sorted = members.sorted()
        guard sorted != group.memberIds else { return nil }
        var changed = group
        changed.memberIds = sorted
        changed.version += 1
        changed.updatedAt = Google_Protobuf_Timestamp(date: time)
        return changed
    }

    /// `group` after user `userID` was deleted, at the next version; nil if it was not a member.
    public static func group(_ group: Group, losingDeletedUser userID: String, at time: Date = Date()) -> Group? {
        self.group(group, adding: false, members: [userID], at: time)
    }

    /// The event for an entity's new `version`: an upsert carrying `state`, or a deletion when
    /// `state` is nil. Its message id, `<kind>:<id>:<version>`, lets consumers drop duplicates.
    public static func change(kind: EntityKind, id: String, version: UInt64, state: EntityChange.OneOf_State?,
                              producer: String, at time: Date = Date()) -> EntityChange {
        var change = EntityChange()
        change.messageID = "\(kind.rawValue):\(id):\(version)"
        change.entityType = kind.protoType
        change.entityID = id
        change.version = version
        change.operation = state == nil ? .delete : .upsert
        change.state = state
        change.occurredAt = Google_Protobuf_Timestamp(date: time)
        change.producer = producer
        return change
    }

    /// The snapshot entry for an entity as a store holds it: its serialized state (ignored for a
    /// tombstone) at `version`.
    public static func snapshotEntry(kind: EntityKind, id: String, version: UInt64, deleted: Bool, state: [UInt8],
                                     producer: String) throws -> EntityChange {
        var change = EntityChange()
        change.messageID = "snapshot:\(kind.rawValue):\(id):\(version)"
        change.entityType = kind.protoType
        change.entityID = id
        change.version = version
        change.operation = deleted ? .delete : .upsert
        change.producer = producer
        if !deleted {
            switch kind {
            case .user: change.user = try User(serializedBytes: state)
            case .group: change.group = try Group(serializedBytes: state)
            }
        }
        return change
    }
}
