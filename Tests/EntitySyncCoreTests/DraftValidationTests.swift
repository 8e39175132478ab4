import EntitySyncCore
import Testing

@Suite struct DraftValidationTests {
    @Test(arguments: ["", "has space", "ümlaut", String(repeating: "x", count: 129)])
    func badIDs(_ id: String) {
        #expect(throws: SyncError.self) { try DraftValidation.validateID(id, field: "user.id") }
    }

    @Test(arguments: ["nope", "a@b", "@b.c", "a@.c", "a b@c.d", "a@b."])
    func badEmails(_ email: String) {
        do {
            try DraftValidation.validate(UserDraft(id: "u1", name: "A", email: email))
            Issue.record("accepted \(email)")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("user.email"))
        }
    }

    /// A name of nothing but spaces and tabs, ASCII or not, is empty; any other character is a name.
    @Test(arguments: ["", " ", "\t \t", "\u{00A0}", "\u{2003}\u{3000}", " \u{202F} "])
    func blankNamesAreRefused(_ name: String) {
        #expect(throws: SyncError.self) { try DraftValidation.validate(UserDraft(id: "u1", name: name, email: "a@b.c")) }
        #expect(throws: SyncError.self) { try DraftValidation.validate(GroupDraft(id: "g1", name: name)) }
    }

    @Test(arguments: [".", " a ", "\u{00A0}é", "\n", "名", "\u{200B}"])
    func namesWithAnythingButSpacesAreKept(_ name: String) throws {
        try DraftValidation.validate(UserDraft(id: "u1", name: name, email: "a@b.c"))
        try DraftValidation.validate(GroupDraft(id: "g1", name: name))
    }

    @Test(arguments: ["a\tb@c.d", "a@b.c\n", "a\u{00A0}b@c.d", "a@b\u{2028}.c"])
    func emailsWithWhitespaceAreRefused(_ email: String) {
        #expect(throws: SyncError.self) { try DraftValidation.validate(UserDraft(id: "u1", name: "A", email: email)) }
    }

    @Test func goodDrafts() throws {
        try DraftValidation.validate(UserDraft(id: "user-1@corp:eu.x_y", name: "Ada", email: "ada@example.com"))
        try DraftValidation.validate(GroupDraft(id: "g1", name: "Admins", memberIDs: ["u1", "u2"]))
    }
}
