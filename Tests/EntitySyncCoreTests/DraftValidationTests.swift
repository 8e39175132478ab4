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

    @Test func goodDrafts() throws {
        try DraftValidation.validate(UserDraft(id: "user-1@corp:eu.x_y", name: "Ada", email: "ada@example.com"))
        try DraftValidation.validate(GroupDraft(id: "g1", name: "Admins", memberIDs: ["u1", "u2"]))
    }
}
