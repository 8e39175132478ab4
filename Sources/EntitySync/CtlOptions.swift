import ArgumentParser
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import HTTP2RPC
import SwiftProtobuf

struct CtlOptions: ParsableArguments {
    @Option(help: "Producer address (env: ENTITY_SYNC_PRODUCER; default: 127.0.0.1:50051).")
    var producer: String?
    @Option(help: "A user-rpc address (env: ENTITY_SYNC_USER_RPC; default: 127.0.0.1:50052).")
    var userRPC: String?
    @Option(help: "An org-rpc address (env: ENTITY_SYNC_ORG_RPC; default: 127.0.0.1:50053).")
    var orgRPC: String?
    @Option(help: "Bearer token for mutations (env: ENTITY_SYNC_TOKEN).")
    var token: String?
    @Option(help: "PEM CA that signed the services' certificates; setting it calls them over TLS (env: ENTITY_SYNC_TLS_CA; default: plaintext).")
    var tlsCA: String?
    @Option(help: "PEM client certificate, for services started with --tls-client-ca (env: ENTITY_SYNC_TLS_CERT).")
    var tlsCert: String?
    @Option(help: "PEM private key of --tls-cert (env: ENTITY_SYNC_TLS_KEY).")
    var tlsKey: String?
    @Flag(help: "Print JSON instead of tables.")
    var json = false
    @Option(help: "Seconds a call may take before ctl gives up on it (calls that wait on purpose, such as wait --timeout-ms, get that wait on top).")
    var callTimeout: Double = 30

    /// TLS for every call when a CA is given. A client certificate without a CA would send the
    /// token in plaintext while the user meant TLS: refused.
    var tls: ClientTLS? {
        get throws {
            let certificate = optionalSetting(self.tlsCert, "ENTITY_SYNC_TLS_CERT")
            let key = optionalSetting(self.tlsKey, "ENTITY_SYNC_TLS_KEY")
            guard let ca = optionalSetting(self.tlsCA, "ENTITY_SYNC_TLS_CA") else {
                if certificate != nil || key != nil {
                    throw ValidationError("--tls-cert and --tls-key need --tls-ca: the CA that signed the services' certificates")
                }
                return nil
            }
            guard (certificate == nil) == (key == nil) else {
                throw ValidationError("--tls-cert and --tls-key go together: give both to present a client certificate, or neither")
            }
            return ClientTLS(caPath: ca, certificatePath: certificate, keyPath: key)
        }
    }

    func address(_ flag: String?, _ variable: String, _ fallback: String) throws -> HostPort {
        try HostPort(setting(flag, variable, fallback))
    }

    var producerAddress: HostPort { get throws { try self.address(self.producer, "ENTITY_SYNC_PRODUCER", "127.0.0.1:50051") } }
    var userRPCAddress: HostPort { get throws { try self.address(self.userRPC, "ENTITY_SYNC_USER_RPC", "127.0.0.1:50052") } }
    var orgRPCAddress: HostPort { get throws { try self.address(self.orgRPC, "ENTITY_SYNC_ORG_RPC", "127.0.0.1:50053") } }

    var metadata: Metadata {
        var metadata = Metadata()
        if let token = optionalSetting(self.token, "ENTITY_SYNC_TOKEN") { metadata.addString("Bearer \(token)", forKey: "authorization") }
        return metadata
    }

    mutating func validate() throws {
        _ = try self.callDeadline
    }

    /// `--call-timeout` as a duration, checked.
    var callDeadline: Duration {
        get throws {
            guard self.callTimeout >= 0.001, self.callTimeout <= 3600 else {
                throw ValidationError("--call-timeout must be from 0.001 to 3600 seconds")
            }
            return .seconds(self.callTimeout)
        }
    }

    /// Runs `body` with a client connected to `address` (the command's session's connection, see
    /// `CtlSession`); RPC failures print their status and message. `body` (usually one call) is
    /// given `--call-timeout`, plus `waits` for a call that waits on purpose, then abandoned:
    /// a service that accepts the connection and never answers must not hold ctl forever. With
    /// `waits` nil the call has no limit (a redrive of every dead letter takes what it takes).
    func withClient<T: Sendable>(_ address: HostPort, waits: Duration? = .zero,
                                 _ body: @escaping @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        let limit = try waits.map { try self.callDeadline + $0 }
        let tls = try self.tls
        let call: @Sendable () async throws -> T = {
            if let session = CtlSession.current {
                return try await body(try session.client(for: address, tls: tls, timeout: limit))
            }
            return try await withGRPCClient(transport: .http2NIOPosix(target: .dns(host: address.host, port: address.port),
                                                                       transportSecurity: tls.transportSecurity,
                                                                       serviceConfig: Self.serviceConfig(timeout: limit))) { client in
                try await body(client)
            }
        }
        do {
            guard let limit else { return try await call() }
            let start = ContinuousClock.now
            do {
                return try await Self.within(limit, address: address, call)
            } catch where Self.endedByDeadline(error) && ContinuousClock.now - start >= limit && !Task.isCancelled {
                // grpc-swift's own end of the same deadline (DEADLINE_EXCEEDED, or the
                // cancellation of the call it ends with, whichever its race lets out); a service's
                // DEADLINE_EXCEEDED before it (WaitForVersion's wait running out) keeps its message.
                throw Self.late(address, limit)
            }
        } catch let error as RPCError where error.code == .unavailable {
            throw CtlError(description: "could not reach \(address) (\(error.message)). Is the service running there? "
                           + "scripts/run starts them all; --producer, --user-rpc and --org-rpc point ctl elsewhere")
        } catch let error as RPCError {
            throw CtlError(description: "\(address) answered \(error.code): \(error.message)")
        }
    }

    /// Runs `work`, or throws once `limit` has passed (cancelling it, but not waiting for it:
    /// grpc-swift's client can wait on a connection that never got the server's settings past
    /// any cancellation, and the command must still end).
    static func within<T: Sendable>(_ limit: Duration, address: HostPort,
                                    _ work: @escaping @Sendable () async throws -> T) async throws -> T {
        try await abandoning(at: .now + limit, late: { Self.late(address, limit) }, cancelled: { CancellationError() }, work)
    }

    private static func endedByDeadline(_ error: any Error) -> Bool {
        error is CancellationError || (error as? RPCError)?.code == .deadlineExceeded
    }

    private static func late(_ address: HostPort, _ limit: Duration) -> CtlError {
        CtlError(description: "\(address) did not answer within \(limit) (--call-timeout); a change it was asked to "
                 + "make may still have been made. Is the service there healthy? `ctl health` tells; a slow one may "
                 + "need a larger --call-timeout")
    }

    /// Every method's default timeout on a client: grpc-swift sends it as `grpc-timeout`, so the
    /// service ends a call the command has given up on instead of finishing work nobody waits for.
    static func serviceConfig(timeout: Duration?) -> ServiceConfig {
        guard let timeout else { return ServiceConfig() }
        return ServiceConfig(methodConfig: [MethodConfig(names: [MethodConfig.Name(service: "")], timeout: timeout)])
    }

    func print(_ message: some SwiftProtobuf.Message, table: () -> String) throws {
        try self.print([message], table: table)
    }

    /// With --json, one JSON object per line; otherwise the table.
    func print(_ messages: [some SwiftProtobuf.Message], table: () -> String) throws {
        if self.json {
            for message in messages { Swift.print(try message.jsonString()) }
        } else {
            Swift.print(table())
        }
    }
}
