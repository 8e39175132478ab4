import Foundation

/// Field checks for mutations, with messages that name the field and say what is allowed.
public enum DraftValidation {
    public static let maximumIDLength = 128

    public static func validateID(_ id: String, field: String) throws(SyncError) {
        guard !id.isEmpty else { throw SyncError(.invalidArgument, "\(field) is empty; give a non-empty id") }
        guard id.utf8.count <= Self.maximumIDLength else {
            throw SyncError(.invalidArgument, "\(field) is longer than \(Self.maximumIDLength) bytes")
        }
        guard id.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._:@-".unicodeScalars.contains($0)) }) else {
            throw SyncError(.invalidArgument, "\(field) '\(id)' may contain only ASCII letters, digits and . _ : @ -")
        }
    }

    public static func validate(_ draft: UserDraft) throws(SyncError) {
        try self.validateID(draft.id, field: "user.id")
        guard !draft.name.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw SyncError(.invalidArgument, "user.name is empty; give the user a name")
        }
        guard Self.isPlausibleEmail(draft.email) else {
            throw SyncError(.invalidArgument, "user.email '\(draft.email)' is not an email address (expected name@domain.tld)")
        }
        guard draft.status == .active || draft.status == .disabled else {
            throw SyncError(.invalidArgument, "user.status must be ACTIVE or DISABLED")
        }
    }

    public static func validate(_ draft: GroupDraft) throws(SyncError) {
        try self.validateID(draft.id, field: "group.id")
        guard !draft.name.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw SyncError(.invalidArgument, "group.name is empty; give the group a name")
        }
        for member in draft.memberIDs { try self.validateID(member, field: "group.member_ids") }
    }

    static func isPlausibleEmail(_ email: String) -> Bool {
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !email.contains(where: \.isWhitespace) else { return false }
        let domain = parts[1].split(separator: ".", omittingEmptySubsequences: false)
        return domain.count >= 2 && domain.allSatisfy { !$0.isEmpty }
    }
}
