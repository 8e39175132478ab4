import EntitySyncCore
import EntitySyncPostgres
import EntitySyncSQLite
import Foundation

/// A store backend the store suite runs against: SQLite always, PostgreSQL when scripts/test
/// started one (`ENTITY_SYNC_TEST_POSTGRES_URL`).
public enum StoreBackend: String, Sendable, CaseIterable, CustomStringConvertible {
    case sqlite
    case postgres

    /// `ENTITY_SYNC_TEST_POSTGRES_URL`: a database the tests may create schemas in.
    public static let postgresURL = ProcessInfo.processInfo.environment["ENTITY_SYNC_TEST_POSTGRES_URL"]

    /// The backends this run can reach.
    public static var available: [StoreBackend] { self.postgresURL == nil ? [.sqlite] : [.sqlite, .postgres] }

    public var description: String { self.rawValue }

    /// A new, empty place for one store (a file, or a schema of its own), which every store
    /// opened on it shares, as a group's instances share theirs.
    public func place(_ name: String) throws -> Place {
        switch self {
        case .sqlite:
            return Place(backend: self, location: Fixtures.temporaryDatabasePath(name))
        case .postgres:
            guard let url = Self.postgresURL else {
                throw HarnessError("ENTITY_SYNC_TEST_POSTGRES_URL is not set; scripts/test starts a private PostgreSQL")
            }
            let schema = "t_\(name.lowercased().filter { $0.isLetter || $0.isNumber })_\(UUID().uuidString.prefix(8).lowercased())"
            return Place(backend: self, location: url + (url.contains("?") ? "&" : "?") + "schema=\(schema)")
        }
    }

    /// Where one test's store lives: a SQLite path or a PostgreSQL URL with its own schema.
    public struct Place: Sendable {
        public let backend: StoreBackend
        public let location: String

        public func source(producer: String = "p1") async throws -> any SourceStore {
            switch self.backend {
            case .sqlite: try SQLiteSourceStore(path: self.location, producer: producer)
            case .postgres: try await PostgresSourceStore(url: try PostgresURL(self.location), producer: producer)
            }
        }

        public func replica(group: String = "test") async throws -> any ReplicaStore {
            switch self.backend {
            case .sqlite: try SQLiteReplicaStore(path: self.location)
            case .postgres: try await PostgresReplicaStore(url: try PostgresURL(self.location), group: group)
            }
        }
    }
}

/// Runs SQL against a PostgreSQL store's schema with psql, as an operator would.
public enum PostgresAdmin {
    /// Runs `statement`; returns psql's unaligned, tuples-only output.
    @discardableResult
    public static func execute(_ url: PostgresURL, _ statement: String) async throws -> String {
        let (arguments, environment) = self.psql(url, statement)
        let completion = try ChildProcess.run("/usr/bin/psql", arguments, environment: environment)
        guard completion.succeeded else { throw HarnessError("psql failed (\(completion.termination)): \(completion.output)") }
        return completion.output
    }

    /// Starts psql running `statement` in the background (a lock held for a while), its output
    /// appended to `log`.
    public static func start(_ url: PostgresURL, _ statement: String, log: String) throws -> ChildProcess {
        let (arguments, environment) = self.psql(url, statement)
        return try ChildProcess("/usr/bin/psql", arguments, environment: environment, log: log)
    }

    /// psql's arguments and environment for `statement` in `url`'s schema.
    private static func psql(_ url: PostgresURL, _ statement: String) -> ([String], [String: String]) {
        var environment = ProcessInfo.processInfo.environment
        environment["PGPASSWORD"] = url.password ?? ""
        environment["PGOPTIONS"] = "-c search_path=\(url.schema ?? "public")"
        environment["PGSSLMODE"] = url.tls.rawValue
        return (["-v", "ON_ERROR_STOP=1", "-tA", "-h", url.socketDirectory ?? url.host ?? "localhost", "-p", "\(url.port)",
                 "-U", url.user, "-d", url.database, "-c", statement], environment)
    }
}

/// The private PostgreSQL server scripts/test started (`ENTITY_SYNC_TEST_POSTGRES_DIR`), for
/// outage scenarios.
public enum TestPostgres {
    static let environment = ProcessInfo.processInfo.environment
    public static let directory = environment["ENTITY_SYNC_TEST_POSTGRES_DIR"]
    /// The path of scripts/postgres-private.
    public static let script = environment["ENTITY_SYNC_TEST_POSTGRES_CTL"]

    public static var isControllable: Bool { StoreBackend.postgresURL != nil && directory != nil && script != nil }

    /// Stops the server (fast shutdown: sessions are cut).
    public static func stop() throws { try self.run("stop") }
    /// Starts it again with its data.
    public static func start() throws { try self.run("start") }

    private static func run(_ command: String) throws {
        guard let script, let directory else { throw HarnessError("ENTITY_SYNC_TEST_POSTGRES_DIR/_CTL are not set") }
        try ChildProcess.shell("'\(script)' \(command) '\(directory)' >/dev/null")
    }
}
