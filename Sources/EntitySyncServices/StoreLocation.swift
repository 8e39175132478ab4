import EntitySyncCore
import EntitySyncPostgres
import EntitySyncSQLite
import Logging

/// Where a service keeps its store, from `--db`: a file path (SQLite, for instances on one host)
/// or a `postgres://` URL (PostgreSQL, for instances on several hosts).
public enum StoreLocation: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(PostgresURL)

    public init(_ string: String) throws(SyncError) {
        if PostgresURL.isPostgres(string) {
            self = .postgres(try PostgresURL(string))
        } else if string.contains("://") {
            throw SyncError(.configuration, "'\(PostgresURL.redact(string))' is neither a file path nor a postgres:// URL; "
                            + "give --db a SQLite file path or postgres://USER:PASSWORD@HOST:PORT/DATABASE")
        } else {
            self = .sqlite(path: string)
        }
    }

    /// The location as logs may show it: a path, or the URL without its password.
    public var description: String {
        switch self {
        case .sqlite(let path): path
        case .postgres(let url): url.description
        }
    }

    /// Opens (creating or migrating) the producer's source store here.
    public func openSource(producer: String, logger: Logger) async throws -> any SourceStore {
        switch self {
        case .sqlite(let path): try SQLiteSourceStore(path: path, producer: producer)
        case .postgres(let url): try await PostgresSourceStore(url: url, producer: producer, logger: logger)
        }
    }

    /// Opens (creating or migrating) consumer group `group`'s replica store here.
    public func openReplica(group: String, logger: Logger) async throws -> any ReplicaStore {
        switch self {
        case .sqlite(let path): try SQLiteReplicaStore(path: path)
        case .postgres(let url): try await PostgresReplicaStore(url: url, group: group, logger: logger)
        }
    }
}
