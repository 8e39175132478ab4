import EntitySyncCore
import Foundation

/// A `postgres://user:password@host:port/database?sslmode=…&schema=…` store address, parsed
/// once. Its `description` never shows the password, so it is safe in logs and errors.
public struct PostgresURL: Sendable, Equatable, CustomStringConvertible {
    /// How the connection uses TLS, as libpq's `sslmode` names it (the modes that do not check
    /// the certificate chain are refused: they would protect nothing a user expects).
    public enum TLSMode: String, Sendable, Equatable {
        case disable, prefer, require
    }

    public var user: String
    public var password: String?
    /// A host name or address; nil with `socketDirectory` set.
    public var host: String?
    public var port: Int
    /// libpq's `?host=/dir`: the directory of the server's Unix socket.
    public var socketDirectory: String?
    public var database: String
    public var tls: TLSMode
    /// The PostgreSQL schema the store's tables live in; nil lets the store pick its own.
    public var schema: String?

    /// True when `string` names a PostgreSQL store rather than a SQLite file.
    public static func isPostgres(_ string: String) -> Bool {
        string.hasPrefix("postgres://") || string.hasPrefix("postgresql://")
    }

    public init(_ string: String) throws(SyncError) {
        guard Self.isPostgres(string), let components = URLComponents(string: string) else {
            throw SyncError(.configuration, "'\(Self.redact(string))' is not a PostgreSQL URL; write it as "
                            + "postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=disable|prefer|require")
        }
        // The percent-encoded parts, decoded once: `URLComponents.user` and friends decode
        // already, and decoding again would turn a password's `%2541` into `A`.
        for (part, encoded) in [("user", components.percentEncodedUser), ("password", components.percentEncodedPassword)] {
            if let encoded, encoded.removingPercentEncoding == nil {
                throw SyncError(.configuration, "the \(part) in the PostgreSQL URL '\(Self.redact(string))' has a % "
                                + "escape that is not UTF-8; write a literal % as %25")
            }
        }
        guard let user = components.percentEncodedUser?.removingPercentEncoding, !user.isEmpty else {
            throw SyncError(.configuration, "the PostgreSQL URL '\(Self.redact(string))' names no user; write it as "
                            + "postgres://USER:PASSWORD@HOST:PORT/DATABASE")
        }
        self.user = user
        self.password = components.percentEncodedPassword?.removingPercentEncoding
        let encodedPath = components.percentEncodedPath
        let path = encodedPath.hasPrefix("/") ? String(encodedPath.dropFirst()) : encodedPath
        guard let database = path.removingPercentEncoding, !database.isEmpty, !database.contains("/") else {
            throw SyncError(.configuration, "the PostgreSQL URL '\(Self.redact(string))' names no database; add "
                            + "/DATABASE after the host")
        }
        self.database = database
        self.port = components.port ?? 5432
        self.host = components.host.flatMap { $0.isEmpty ? nil : $0 }
        self.socketDirectory = nil
        self.tls = .prefer
        self.schema = nil
        for item in components.queryItems ?? [] {
            let value = item.value ?? ""
            switch item.name {
            case "sslmode":
                guard let mode = TLSMode(rawValue: value) else {
                    throw SyncError(.configuration, "sslmode '\(value)' in the PostgreSQL URL is not supported; use "
                                    + "disable, prefer or require")
                }
                self.tls = mode
            case "host" where value.hasPrefix("/"):
                self.socketDirectory = value
            case "schema":
                guard Self.isValidSchema(value) else {
                    throw SyncError(.configuration, "schema '\(value)' in the PostgreSQL URL is not a plain name; use "
                                    + "1 to 63 lowercase letters, digits and underscores, starting with a letter")
                }
                self.schema = value
            default:
                throw SyncError(.configuration, "the PostgreSQL URL parameter '\(item.name)' is not supported; "
                                + "EntitySync reads sslmode, schema and host (a socket directory)")
            }
        }
        guard self.host != nil || self.socketDirectory != nil else {
            throw SyncError(.configuration, "the PostgreSQL URL '\(Self.redact(string))' names no host; write it as "
                            + "postgres://USER:PASSWORD@HOST:PORT/DATABASE")
        }
    }

    public var description: String {
        var text = "postgres://\(self.user)\(self.password == nil ? "" : ":***")@\(self.host ?? "")"
        if self.host != nil { text += ":\(self.port)" }
        text += "/\(self.database)"
        var parameters = ["sslmode=\(self.tls.rawValue)"]
        if let socketDirectory { parameters.append("host=\(socketDirectory)") }
        if let schema { parameters.append("schema=\(schema)") }
        return text + "?" + parameters.joined(separator: "&")
    }

    /// A schema name the store can put in SQL without quoting surprises.
    public static func isValidSchema(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, (97...122).contains(first.value), name.utf8.count <= 63 else {
            return false
        }
        return name.unicodeScalars.allSatisfy { (97...122).contains($0.value) || (48...57).contains($0.value) || $0 == "_" }
    }

    /// `string` with whatever sits between `://user:` and `@` hidden, for messages about a URL
    /// that did not parse.
    public static func redact(_ string: String) -> String {
        guard let scheme = string.range(of: "://"), let at = string.range(of: "@", options: .backwards),
              at.lowerBound > scheme.upperBound else { return string }
        let credentials = string[scheme.upperBound..<at.lowerBound]
        guard let colon = credentials.firstIndex(of: ":") else { return string }
        return String(string[..<colon]) + ":***" + String(string[at.lowerBound...])
    }
}
