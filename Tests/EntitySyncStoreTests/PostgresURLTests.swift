import EntitySyncCore
import EntitySyncPostgres
import Testing

@Suite struct PostgresURLTests {
    @Test func readsEveryPartAndDefaults() throws {
        let url = try PostgresURL("postgres://sync:s%40cret@db.example:6543/entities?sslmode=require&schema=users_a")
        #expect(url.user == "sync" && url.password == "s@cret")
        #expect(url.host == "db.example" && url.port == 6543 && url.database == "entities")
        #expect(url.tls == .require && url.schema == "users_a")
        let plain = try PostgresURL("postgresql://sync@localhost/entities")
        #expect(plain.port == 5432 && plain.password == nil && plain.tls == .prefer && plain.schema == nil)
        // Decoded once: `%25` is a literal percent sign, whatever follows it.
        #expect(try PostgresURL("postgres://sync:100%25@db/entities").password == "100%")
        #expect(try PostgresURL("postgres://sync:ab%2541@db/entities").password == "ab%41")
        #expect(try PostgresURL("postgres://sync%2Bci:p@db/my%2Ddb").user == "sync+ci")
        let socket = try PostgresURL("postgres://sync@/entities?host=/run/postgresql")
        #expect(socket.socketDirectory == "/run/postgresql" && socket.host == nil)
    }

    @Test func theDescriptionNeverShowsThePassword() throws {
        let url = try PostgresURL("postgres://sync:hunter2@db:5432/entities?sslmode=disable")
        #expect(!url.description.contains("hunter2"))
        #expect(url.description == "postgres://sync:***@db:5432/entities?sslmode=disable")
        #expect(!PostgresURL.redact("postgres://sync:hunter2@db:bad/x").contains("hunter2"))
    }

    @Test(arguments: [
        ("postgres://db/entities", "no user"),
        ("postgres://sync:pw@db", "no database"),
        ("postgres://sync:pw@db/entities?sslmode=verify-ca", "sslmode"),
        ("postgres://sync:pw@db/entities?schema=Bad-Name", "schema"),
        ("postgres://sync:pw@db/entities?pool=3", "'pool'"),
        ("postgres://sync:p%FFw@db/entities", "%25"),
        ("mysql://sync:pw@db/entities", "not a PostgreSQL URL"),
    ])
    func badURLsAreClearErrorsWithoutThePassword(text: String, says: String) {
        do {
            _ = try PostgresURL(text)
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.code == .configuration)
            #expect(error.message.contains(says), "\(error.message)")
            #expect(!error.message.contains(":pw@") && !error.message.contains("p%FFw"), "\(error.message)")
        }
    }

    @Test func schemaNamesArePlain() {
        #expect(PostgresURL.isValidSchema("entitysync_consumer_user_rpc"))
        #expect(!PostgresURL.isValidSchema("1abc"))
        #expect(!PostgresURL.isValidSchema("a\"; DROP TABLE x; --"))
        #expect(!PostgresURL.isValidSchema(String(repeating: "a", count: 64)))
    }
}
