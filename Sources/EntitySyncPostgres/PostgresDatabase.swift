import EntitySyncCore
import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Synchronization
import _ConnectionPoolModule

/// A pool of connections to one PostgreSQL database, its tables in one schema, created and
/// migrated at startup under an advisory lock. Every operation has a deadline and fails as
/// `SyncError.storeUnavailable` (naming the URL without its password) when the server is down.
final class PostgresDatabase: Sendable {
    /// One step of a store's schema; applied once, in order, in one transaction.
    struct Migration: Sendable {
        let version: Int
        let statements: [String]
    }

    /// A connection pool and the task that runs it.
    private struct Pool {
        var client: PostgresClient
        var running: Task<Void, Never>
        /// The last time a stuck pool was suspected and a fresh connection tried.
        var lastRecoveryCheck: ContinuousClock.Instant?
        /// `close()` was called: no operation runs and no pool is started again.
        var closed = false
    }

    let url: PostgresURL
    let schema: String
    let logger: Logger
    private let poolConfiguration: PostgresClient.Configuration
    private let poolLogger: Logger
    private let pool: Mutex<Pool>
    /// How long one operation (waiting for a connection included) may take before it fails.
    let deadline: Duration

    /// Opens the store of `kind` (a word such as "source" or "replica of consumer_user_rpc",
    /// recorded in the schema so that two stores never share one).
    init(url: PostgresURL, kind: String, defaultSchema: String, migrations: [Migration], deadline: Duration = .seconds(10),
         logger: Logger) async throws {
        let schema = url.schema ?? defaultSchema
        guard PostgresURL.isValidSchema(schema) else {
            throw SyncError(.configuration, "'\(schema)' is not a usable PostgreSQL schema name; set one with ?schema= "
                            + "(lowercase letters, digits and underscores)")
        }
        self.url = url
        self.schema = schema
        self.deadline = deadline
        var logger = logger
        logger[metadataKey: "store.url"] = "\(url)"
        self.logger = logger
        // One connection first, so that a wrong password or a refused connection fails at once
        // with its reason instead of as a timeout while the pool retries in the background.
        if let failure = await Self.probe(url, schema: schema) {
            throw Self.translate(failure, what: "connect", url: url)
        }
        // The pool logs each failed connection attempt; the store reports outages itself.
        var poolLogger = logger
        poolLogger.logLevel = max(logger.logLevel, .warning)
        self.poolLogger = poolLogger
        self.poolConfiguration = Self.configuration(url: url, schema: schema)
        self.pool = Mutex(Self.startPool(self.poolConfiguration, logger: poolLogger))
        do {
            try await self.migrate(migrations, kind: kind)
        } catch {
            self.close()
            throw error
        }
    }

    deinit {
        self.close()
    }

    /// Closes every connection; operations after this fail.
    func close() {
        self.pool.withLock { pool in
            pool.closed = true
            pool.running.cancel()
        }
    }

    private static func startPool(_ configuration: PostgresClient.Configuration, logger: Logger) -> Pool {
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        return Pool(client: client, running: Task { await client.run() })
    }

    /// The running pool's client; fails once the store was closed.
    private func currentClient() throws -> PostgresClient {
        try self.pool.withLock { pool in
            guard !pool.closed else {
                throw SyncError(.storeUnavailable, "the PostgreSQL store at \(self.url) was closed by this process")
            }
            return pool.client
        }
    }

    /// After the pool could not produce a connection (its circuit breaker tripped, or the
    /// deadline passed before any connection was lent): if a fresh connection now logs in, the
    /// pool is stuck backing off after an outage (postgres-nio waits up to a minute between
    /// attempts once its breaker opened), so it is replaced. Tried at most every 2 s; never
    /// for a failure on a lent connection, so a healthy pool's work is not cut off.
    private func recoverPoolIfStuck() async {
        let due = self.pool.withLock { pool -> Bool in
            guard !pool.closed else { return false }
            if let last = pool.lastRecoveryCheck, last.duration(to: .now) < .seconds(2) { return false }
            pool.lastRecoveryCheck = .now
            return true
        }
        guard due, await Self.probe(self.url, schema: self.schema) == nil else { return }
        let replaced = Self.startPool(self.poolConfiguration, logger: self.poolLogger)
        let old = self.pool.withLock { pool -> Task<Void, Never>? in
            // Closed meanwhile: the new pool goes, the closed one stays closed.
            guard !pool.closed else { return replaced.running }
            defer { pool = Pool(client: replaced.client, running: replaced.running, lastRecoveryCheck: .now) }
            return pool.running
        }
        old?.cancel()
        self.logger.notice("PostgreSQL answers again; its connection pool was renewed")
    }

    /// True when the pool itself gave up producing a connection.
    private static func isPoolGivingUp(_ error: any Error) -> Bool {
        switch error {
        case let error as ConnectionPoolError:
            return error == .connectionCreationCircuitBreakerTripped
        case let error as PostgresTransactionError:
            return (error.beginError ?? error.closureError).map(self.isPoolGivingUp) ?? false
        default:
            return false
        }
    }

    /// Per-session settings that keep one frozen or vanished instance from holding the others:
    /// a transaction left idle (its process stopped mid-way) is ended by the server and its
    /// locks released; a lock wait gives up before the caller's deadline instead of committing
    /// after the caller was told it failed; and the server notices a dead client host within
    /// about 20 s instead of TCP's two hours.
    /// `synchronous_commit` is set on because a server configured with it off would lose the last
    /// commits on a crash, after they were acked to the broker or replied to a caller.
    static let sessionSettings = [
        ("synchronous_commit", "on"),
        ("idle_in_transaction_session_timeout", "15000"),
        ("lock_timeout", "8000"),
        ("statement_timeout", "9000"),
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "2"),
    ]

    /// Unqualified names resolve in the store's schema, on every connection; then the session
    /// settings.
    static func startupParameters(schema: String) -> [(String, String)] {
        [("search_path", schema), ("application_name", "entity-sync")] + self.sessionSettings
    }

    /// Why one new connection to `url` fails, or nil if it logs in.
    static func probe(_ url: PostgresURL, schema: String) async -> (any Error)? {
        var configuration: PostgresConnection.Configuration
        do {
            if let directory = url.socketDirectory {
                configuration = .init(unixSocketPath: "\(directory)/.s.PGSQL.\(url.port)", username: url.user,
                                      password: url.password, database: url.database)
            } else {
                let mode: PostgresConnection.Configuration.TLS
                switch url.tls {
                case .disable: mode = .disable
                case .prefer: mode = .prefer(try NIOSSLContext(configuration: Self.tlsConfiguration))
                case .require: mode = .require(try NIOSSLContext(configuration: Self.tlsConfiguration))
                }
                configuration = .init(host: url.host ?? "localhost", port: url.port, username: url.user,
                                      password: url.password, database: url.database, tls: mode)
            }
            configuration.options.connectTimeout = .seconds(5)
            // What the pool's connections send, so that a server (or a pooler) refusing one of
            // them fails here too.
            configuration.options.additionalStartupParameters = Self.startupParameters(schema: schema)
            let connection = try await PostgresConnection.connect(
                on: PostgresClient.defaultEventLoopGroup.any(), configuration: configuration, id: 0,
                logger: Logger(label: "entitysync.postgres.probe", factory: { _ in SwiftLogNoOpLogHandler() })).get()
            try? await connection.close()
            return nil
        } catch {
            return error
        }
    }

    /// libpq's meaning of prefer and require: encrypt without checking who answers.
    private static var tlsConfiguration: TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        return tls
    }

    private static func configuration(url: PostgresURL, schema: String) -> PostgresClient.Configuration {
        var configuration: PostgresClient.Configuration
        if let directory = url.socketDirectory {
            configuration = .init(unixSocketPath: "\(directory)/.s.PGSQL.\(url.port)", username: url.user,
                                  password: url.password, database: url.database)
        } else {
            let mode: PostgresClient.Configuration.TLS
            switch url.tls {
            case .disable: mode = .disable
            case .prefer: mode = .prefer(Self.tlsConfiguration)
            case .require: mode = .require(Self.tlsConfiguration)
            }
            configuration = .init(host: url.host ?? "localhost", port: url.port, username: url.user,
                                  password: url.password, database: url.database, tls: mode)
        }
        // Unqualified names resolve in the store's schema, on every pooled connection.
        configuration.options.additionalStartupParameters = Self.startupParameters(schema: schema)
        configuration.options.maximumConnections = 8
        configuration.options.connectTimeout = .seconds(5)
        // Idle connections are checked often, so that a restarted server is noticed before use.
        configuration.options.keepAliveBehavior = .init(frequency: .seconds(10))
        return configuration
    }

    // MARK: Operations

    /// Runs `body` in one transaction (BEGIN … COMMIT, rolled back if it throws).
    func transaction<T: Sendable>(_ what: String, _ body: @escaping @Sendable (SQL) async throws -> T) async throws -> T {
        let client = try self.currentClient()
        let logger = self.logger
        return try await self.withDeadline(what) { lent in
            try await client.withTransaction(logger: logger) { connection in
                lent.mark()
                let result = try await body(SQL(connection: connection, logger: logger))
                // Given up on meanwhile (the deadline passed): roll back rather than commit a
                // change its caller was told failed.
                try Task.checkCancellation()
                return result
            }
        }
    }

    /// Runs `body` on one pooled connection, outside a transaction (each statement commits).
    func read<T: Sendable>(_ what: String, deadline: Duration? = nil,
                           _ body: @escaping @Sendable (SQL) async throws -> T) async throws -> T {
        let client = try self.currentClient()
        let logger = self.logger
        return try await self.withDeadline(what, deadline: deadline) { lent in
            try await client.withConnection { connection in
                lent.mark()
                return try await body(SQL(connection: connection, logger: logger))
            }
        }
    }

    /// Listens on `channel` on one pooled connection, calling `notified` once listening and then
    /// for every notification, until the connection ends or fails a check (`SELECT 1` every
    /// `check`, which must answer within 5 s) — it throws — or the task is cancelled.
    func listen(_ channel: String, check: Duration, _ notified: @escaping @Sendable () -> Void) async throws {
        let client = try self.currentClient()
        let logger = self.logger
        try await client.withConnection { connection in
            try await connection.listen(on: channel) { notifications in
                notified()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for try await _ in notifications { notified() }
                        throw SyncError(.storeUnavailable, "the listening connection ended")
                    }
                    group.addTask {
                        while true {
                            try await Task.sleep(for: check)
                            let answered = try await Self.firstOf(.seconds(5)) {
                                _ = try await connection.query("SELECT 1", logger: logger).collect()
                            }
                            guard answered else {
                                throw SyncError(.storeUnavailable, "the listening connection did not answer within 5 s")
                            }
                        }
                    }
                    // Whichever ends first (both only end by throwing) ends the other.
                    defer { group.cancelAll() }
                    _ = try await group.next()
                }
            }
        }
    }

    /// Runs `body`; true if it finished within `limit`, false if the limit came first (the body
    /// is then cancelled).
    private static func firstOf(_ limit: Duration, _ body: @escaping @Sendable () async throws -> Void) async throws -> Bool {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await body()
                return true
            }
            group.addTask {
                try await Task.sleep(for: limit)
                return false
            }
            defer { group.cancelAll() }
            return try await group.next() ?? false
        }
    }

    /// `body`'s result, or `storeUnavailable` once the deadline passes. The work is not awaited
    /// past the deadline: a query stuck on a dead server must not hold its caller too.
    private func withDeadline<T: Sendable>(_ what: String, deadline: Duration? = nil,
                                           _ body: @escaping @Sendable (LentFlag) async throws -> T) async throws -> T {
        let (url, schema) = (self.url, self.schema)
        let deadline = deadline ?? self.deadline
        let outcome = RaceOutcome<T>()
        let lent = LentFlag()
        let work = Task {
            do { outcome.finish(.success(try await body(lent))) } catch { outcome.finish(.failure(error)) }
        }
        let timer = Task {
            guard (try? await Task.sleep(for: deadline)) != nil else { return }
            // Say why, if a fresh connection can tell (refused, login, unknown database).
            let cause = await Self.probe(url, schema: schema).map { ": a new connection fails with \(Self.reason($0))" } ?? ""
            outcome.finish(.failure(SyncError(.storeUnavailable, "PostgreSQL at \(url) did not \(what) within \(deadline)\(cause); "
                                              + "check that the server is up and reachable")))
        }
        let result = await withTaskCancellationHandler {
            await outcome.value
        } onCancel: {
            work.cancel()
            outcome.finish(.failure(CancellationError()))
        }
        timer.cancel()
        switch result {
        case .success(let value):
            return value
        case .failure(let error):
            // Given up on: a wait for a connection ends here, and a transaction still running
            // is rolled back rather than committed after its caller was told it failed (the
            // session settings bound how long a statement or lock wait can run on).
            work.cancel()
            if Self.isPoolGivingUp(error) || !lent.isMarked {
                await self.recoverPoolIfStuck()
            }
            throw Self.translate(error, what: what, url: url)
        }
    }

    /// What the server or the network said, in a few words, for a message.
    static func reason(_ error: any Error) -> String {
        guard let error = error as? PSQLError else { return "\(error)" }
        if error.code == .server, let info = error.serverInfo {
            return "\(info[.message] ?? "an error") (SQLSTATE \(info[.sqlState] ?? "?"))"
        }
        return error.underlying.map { "\($0)" } ?? "\(error.code)"
    }

    /// A store error that says what failed and what to do, without the password.
    static func translate(_ error: any Error, what: String, url: PostgresURL) -> any Error {
        switch error {
        case let error as SyncError:
            return error
        case is CancellationError:
            return error
        case let error as PostgresTransactionError:
            if let inner = error.closureError ?? error.beginError ?? error.commitError {
                return self.translate(inner, what: what, url: url)
            }
            return SyncError(.storeUnavailable, "PostgreSQL at \(url) could not \(what): the transaction failed")
        case let error as PSQLError:
            if error.code == .server, let info = error.serverInfo {
                let state = info[.sqlState] ?? ""
                let message = info[.message] ?? "no message"
                if state.hasPrefix("28") {
                    return SyncError(.configuration, "PostgreSQL at \(url) refused the login: \(message). Check the user "
                                     + "and password in the URL and the server's pg_hba.conf")
                }
                if state == "3D000" {
                    return SyncError(.configuration, "PostgreSQL at \(url): \(message). Create the database first "
                                     + "(createdb \(url.database)) or name an existing one in the URL")
                }
                // Errors about the statement itself (bad data, a constraint, a missing table or
                // column, a limit) come back the same however often it is tried.
                if ["22", "23", "42", "54", "0A"].contains(String(state.prefix(2))) {
                    return SyncError(.storeRejected, "PostgreSQL at \(url) refused to \(what): \(message) (SQLSTATE \(state)); "
                                     + "retrying will not help: check that the schema is this build's")
                }
                return SyncError(.storeUnavailable, "PostgreSQL at \(url) could not \(what): \(message) (SQLSTATE \(state))")
            }
            if [.sslUnsupported, .authMechanismRequiresPassword, .unsupportedAuthMechanism].contains(error.code) {
                return SyncError(.configuration, "PostgreSQL at \(url) cannot be used as configured (\(error.code)): "
                                 + "check sslmode (the server may not offer TLS) and the password in the URL")
            }
            let cause = error.underlying.map { ": \($0)" } ?? ""
            return SyncError(.storeUnavailable, "PostgreSQL at \(url) could not \(what) (\(error.code)\(cause)); "
                             + "check that the server is up and reachable")
        default:
            return SyncError(.storeUnavailable, "PostgreSQL at \(url) could not \(what): \(error)")
        }
    }

    // MARK: Schema

    /// Creates the schema and applies the migrations it lacks. Instances starting together wait
    /// on one advisory lock, so exactly one applies each step and the rest find it applied.
    private func migrate(_ migrations: [Migration], kind: String) async throws {
        let schema = self.schema
        let lockKey = "entitysync-migrate:\(schema)"
        // Another instance may be migrating: wait for it, within reason.
        try await self.read("create its schema", deadline: .seconds(300)) { sql in
            // However long another instance's migration takes, wait for it rather than fail.
            try await sql.execute("SET lock_timeout = 0")
            try await sql.execute("SET statement_timeout = 0")
            try await sql.execute("SELECT pg_advisory_lock(hashtext(\(lockKey)))")
            do {
                try await sql.execute(PostgresQuery(unsafeSQL: "CREATE SCHEMA IF NOT EXISTS \(schema)"))
                try await sql.execute(PostgresQuery(unsafeSQL: "SET search_path TO \(schema)"))
                try await sql.execute("""
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())
                    """)
                // What the schema holds, written by whoever created it: a producer's store and a
                // group's, or two groups', must never share one.
                try await sql.execute("""
                    CREATE TABLE IF NOT EXISTS entitysync_store (
                        id INTEGER PRIMARY KEY CHECK (id = 1), kind TEXT NOT NULL)
                    """)
                try await sql.execute("INSERT INTO entitysync_store (id, kind) VALUES (1, \(kind)) ON CONFLICT (id) DO NOTHING")
                let holds = try await sql.rows("SELECT kind FROM entitysync_store WHERE id = 1").first.map { try $0.decode(String.self) }
                guard holds == kind else {
                    throw SyncError(.configuration, "the PostgreSQL schema '\(schema)' holds the \(holds ?? "unknown") store, not the "
                                    + "\(kind) store; give each store its own schema (leave ?schema= out for the default, "
                                    + "or name a different one)")
                }
                let applied = Set(try await sql.rows("SELECT version FROM schema_migrations").map { try $0.decode(Int.self) })
                if let newest = applied.max(), let known = migrations.map(\.version).max(), newest > known {
                    throw SyncError(.configuration, "the PostgreSQL schema '\(schema)' is at version \(newest), newer than "
                                    + "this build knows (\(known)); run a newer entity-sync or point it at another schema")
                }
                for migration in migrations.sorted(by: { $0.version < $1.version }) where !applied.contains(migration.version) {
                    try await sql.execute("BEGIN")
                    do {
                        for statement in migration.statements { try await sql.execute(PostgresQuery(unsafeSQL: statement)) }
                        try await sql.execute("INSERT INTO schema_migrations (version) VALUES (\(migration.version))")
                        try await sql.execute("COMMIT")
                    } catch {
                        await sql.cleanUp("ROLLBACK")
                        throw error
                    }
                }
            } catch {
                await sql.cleanUp("SELECT pg_advisory_unlock(hashtext(\(lockKey)))")
                await sql.cleanUp("RESET lock_timeout")
                await sql.cleanUp("RESET statement_timeout")
                throw error
            }
            try await sql.execute("SELECT pg_advisory_unlock(hashtext(\(lockKey)))")
            try await sql.execute("RESET lock_timeout")
            try await sql.execute("RESET statement_timeout")
        }
    }
}

/// One connection and the logger its statements log to.
struct SQL: Sendable {
    let connection: PostgresConnection
    let logger: Logger

    // postgres-nio does not stop a query for a cancelled task: each statement checks first, so
    // work given up at its deadline sends nothing more (and a transaction rolls back).
    func execute(_ query: PostgresQuery) async throws {
        try Task.checkCancellation()
        _ = try await self.connection.query(query, logger: self.logger).collect()
    }

    func rows(_ query: PostgresQuery) async throws -> [PostgresRow] {
        try Task.checkCancellation()
        return try await self.connection.query(query, logger: self.logger).collect()
    }

    /// For clean-up (ROLLBACK, unlocking) that must reach the server even when the work that
    /// needs it was given up on.
    func cleanUp(_ query: PostgresQuery) async {
        _ = try? await self.connection.query(query, logger: self.logger).collect()
    }

    /// Serializes the transaction it runs in against every other holder of `key` on this server.
    func lock(_ key: String) async throws {
        try await self.execute("SELECT pg_advisory_xact_lock(hashtext(\(key)))")
    }
}

/// Set once the pool lent the operation a connection: a deadline passed before that means the
/// pool, not the statement, is what failed.
final class LentFlag: Sendable {
    private let lent = Mutex(false)
    func mark() { self.lent.withLock { $0 = true } }
    var isMarked: Bool { self.lent.withLock { $0 } }
}

/// The first of several results; later ones are dropped.
private final class RaceOutcome<T: Sendable>: Sendable {
    private struct State {
        var result: Result<T, any Error>?
        var waiter: CheckedContinuation<Result<T, any Error>, Never>?
    }
    private let state = Mutex(State())

    func finish(_ result: Result<T, any Error>) {
        let waiter = self.state.withLock { state -> CheckedContinuation<Result<T, any Error>, Never>? in
            guard state.result == nil else { return nil }
            state.result = result
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: result)
    }

    var value: Result<T, any Error> {
        get async {
            await withCheckedContinuation { continuation in
                let ready = self.state.withLock { state -> Result<T, any Error>? in
                    if let result = state.result { return result }
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        }
    }
}
