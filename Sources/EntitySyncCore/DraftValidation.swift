import Foundation

/// Field checks for mutations, with messages that name the field and say what is allowed.
public enum DraftValidation {
    public static let maximumIDLength = 128
    /// Members of one group, and ids in one membership change: a group's whole state travels in
    /// one event, and every member is looked up when the group is written.
    public static let maximumMembers = 10_000
    public static let maximumAttributes = 100
    public static let maximumAttributeKeyLength = 128
    public static let maximumTextLength = 16 * 1024

    /// Checks a list of member ids: how many, and each one.
    public static func validateMembers(_ ids: [String], field: String) throws(SyncError) {
        guard ids.count <= Self.maximumMembers else {
            throw SyncError(.invalidArgument, "\(field) has \(ids.count) entries; at most \(Self.maximumMembers) are allowed")
        }
        for id in ids { try self.validateID(id, field: field) }
    }

    static func validateText(_ text: String, field: String) throws(SyncError) {
        guard text.utf8.count <= Self.maximumTextLength else {
            throw SyncError(.invalidArgument, "\(field) is \(text.utf8.count) bytes; at most \(Self.maximumTextLength) are allowed")
        }
    }

    private static func isIDByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }

    public static func validateID(_ id: String, field: String) throws(SyncError) {
        guard !id.isEmpty else { throw SyncError(.invalidArgument, "\(field) is empty; give a non-empty id") }
        guard id.utf8.count <= Self.maximumIDLength else {
            throw SyncError(.invalidArgument, "\(field) is longer than \(Self.maximumIDLength) bytes")
        }
        // Bytes, not Unicode properties: every event is checked, and this is on the catch-up path.
        guard id.utf8.allSatisfy(Self.isIDByte) else {
            throw SyncError(.invalidArgument, "\(field) '\(id)' may contain only ASCII letters, digits and . _ : @ -")
        }
    }

    public static func validate(_ draft: UserDraft) throws(SyncError) {
        try self.validateID(draft.id, field: "user.id")
        guard !Self.isBlank(draft.name) else {
            throw SyncError(.invalidArgument, "user.name is empty; give the user a name")
        }
        guard Self.isPlausibleEmail(draft.email) else {
            throw SyncError(.invalidArgument, "user.email '\(draft.email)' is not an email address (expected name@domain.tld)")
        }
        guard draft.status == .active || draft.status == .disabled else {
            throw SyncError(.invalidArgument, "user.status must be ACTIVE or DISABLED")
        }
        try self.validateText(draft.name, field: "user.name")
        try self.validateText(draft.email, field: "user.email")
        try self.validateAttributes(draft.attributes, field: "user.attributes")
    }

    /// Checks a user's attributes: how many, each key's length and each value's size.
    static func validateAttributes(_ attributes: [String: String], field: String) throws(SyncError) {
        guard attributes.count <= Self.maximumAttributes else {
            throw SyncError(.invalidArgument, "\(field) has \(attributes.count) entries; at most \(Self.maximumAttributes) are allowed")
        }
        for (key, value) in attributes {
            guard !key.isEmpty, key.utf8.count <= Self.maximumAttributeKeyLength else {
                throw SyncError(.invalidArgument, "\(field) has a key of \(key.utf8.count) bytes; keys must be 1 to "
                                + "\(Self.maximumAttributeKeyLength) bytes long")
            }
            try self.validateText(value, field: "\(field)['\(key)']")
        }
    }

    public static func validate(_ draft: GroupDraft) throws(SyncError) {
        try self.validateID(draft.id, field: "group.id")
        guard !Self.isBlank(draft.name) else {
            throw SyncError(.invalidArgument, "group.name is empty; give the group a name")
        }
        try self.validateText(draft.name, field: "group.name")
        try self.validateText(draft.description, field: "group.description")
        try self.validateMembers(draft.memberIDs, field: "group.member_ids")
    }

    /// Whether `text` holds nothing but spaces and tabs (what Foundation's `.whitespaces` holds:
    /// Unicode category Zs and U+0009). Scalars, with an ASCII fast path, rather than Foundation's
    /// trimming, which was 4% of a producer's CPU per mutation.
    static func isBlank(_ text: String) -> Bool {
        for scalar in text.unicodeScalars {
            if scalar == " " || scalar == "\t" { continue }
            if scalar.isASCII || scalar.properties.generalCategory != .spaceSeparator { return false }
        }
        return true
    }

    private static func hasWhitespace(_ text: String) -> Bool {
        text.unicodeScalars.contains { scalar in
            scalar.isASCII ? (scalar == " " || (0x09...0x0D).contains(scalar.value)) : scalar.properties.isWhitespace
        }
    }

    static func isPlausibleEmail(_ email: String) -> Bool {
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !Self.hasWhitespace(email) else { return false }
        let domain = parts[1].split(separator: ".", omittingEmptySubsequences: false)
        return domain.count >= 2 && domain.allSatisfy { !$0.isEmpty }
    }
}
