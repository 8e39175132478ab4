import EntitySyncCore
@testable import EntitySyncImport
import Testing

@Suite struct ImportFileTests {
    @Test func jsonLinesGiveUsersAndGroupsWithTheirLines() throws {
        let text = """
            {"type":"user","id":"u1","name":"Ann","email":"ann@example.com","status":"disabled","attributes":{"team":"a"}}

            # a comment
            {"type":"group","id":"g1","name":"Ops","description":"on call","members":["u1","u2"]}
            """
        let rows = ImportFile.parse(text, format: .jsonl)
        #expect(rows.map(\.line) == [1, 4])
        guard case .success(.user(let user)) = rows[0].record, case .success(.group(let group)) = rows[1].record else {
            Issue.record("unexpected rows: \(rows)")
            return
        }
        #expect(user.id == "u1" && user.name == "Ann" && user.email == "ann@example.com")
        #expect(user.status == .disabled)
        #expect(user.attributes == ["team": "a"])
        #expect(group.id == "g1" && group.description_p == "on call" && group.memberIds == ["u1", "u2"])
    }

    @Test(arguments: [
        ("{not json", "not valid JSON"),
        ("[1,2]", "not a JSON object"),
        (#"{"id":"x"}"#, "missing type"),
        (#"{"type":"robot","id":"x"}"#, "type must be user or group, not 'robot'"),
        (#"{"type":"user"}"#, "missing id"),
        (#"{"type":"user","id":"  "}"#, "empty id"),
        (#"{"type":"user","id":"x","status":"gone"}"#, "status must be active or disabled, not 'gone'"),
        (#"{"type":"user","id":"x","name":7}"#, "name must be a string"),
        (#"{"type":"group","id":"g","members":"u1"}"#, "members must be a list of strings"),
        (#"{"type":"group","id":"g","members":[1]}"#, "members must be a list of strings"),
        (#"{"type":"user","id":"x","attributes":{"a":1}}"#, "attributes values must be strings"),
    ])
    func badJSONRowsAreRejectedWithTheirReason(line: String, reason: String) {
        let rows = ImportFile.parse(line, format: .jsonl)
        #expect(rows.count == 1)
        guard case .failure(let error) = rows.first?.record else {
            Issue.record("accepted: \(rows)")
            return
        }
        #expect(error.description.hasPrefix(reason), "\(error.description)")
    }

    @Test func csvHandlesQuotesCommasNewlinesMembersAndAttributes() throws {
        let text = "type,id,name,email,status,members,attr.team\r\n"
            + "user,c1,\"Doe, Jane\",jane@example.com,active,,blue\r\n"
            + "group,cg,\"Team \"\"C\"\"\nsecond line\",,,c1; c2 ;,\r\n"
            + "\r\n"
            + "user,c3\n"
        let rows = ImportFile.parse(text, format: .csv)
        #expect(rows.map(\.line) == [2, 3, 6])
        guard case .success(.user(let user)) = rows[0].record, case .success(.group(let group)) = rows[1].record else {
            Issue.record("unexpected rows: \(rows)")
            return
        }
        #expect(user.name == "Doe, Jane" && user.attributes == ["team": "blue"])
        #expect(group.name == "Team \"C\"\nsecond line")
        #expect(group.memberIds == ["c1", "c2"])
        guard case .failure(let error) = rows[2].record else {
            Issue.record("short row accepted")
            return
        }
        #expect(error.description == "has 2 fields, the header has 7")
    }

    @Test func csvHeaderMustBeKnownAndNameTypeAndID() {
        let unknown = ImportFile.parse("type,id,colour\nuser,u,red\n", format: .csv)
        #expect(unknown.count == 1)
        if case .failure(let error) = unknown.first?.record {
            #expect(error.description.contains("unknown column 'colour'"))
        } else {
            Issue.record("unknown column accepted")
        }
        let missing = ImportFile.parse("name,email\nAnn,ann@example.com\n", format: .csv)
        if case .failure(let error) = missing.first?.record {
            #expect(error.description.contains("at least the columns type and id"))
        } else {
            Issue.record("header without type accepted")
        }
    }

    @Test func formatFollowsTheFileName() {
        #expect(ImportFormat(path: "people.jsonl") == .jsonl)
        #expect(ImportFormat(path: "dir/people.NDJSON") == .jsonl)
        #expect(ImportFormat(path: "people.csv") == .csv)
        #expect(ImportFormat(path: "people.txt") == nil)
    }
}
