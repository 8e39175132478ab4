import EntitySyncCore
import GRPCNIOTransportHTTP2
import NIOSSL

/// How our own gRPC clients (ctl, a consumer's snapshot call to the producer) reach a service
/// that serves TLS: the CA that signed its certificate, and a client certificate where the
/// service asks for one.
public struct ClientTLS: Sendable, Equatable {
    /// PEM CA certificates to trust; nil trusts the system's roots.
    public var caPath: String?
    /// A PEM client certificate chain and key, for services started with --tls-client-ca.
    public var certificatePath: String?
    public var keyPath: String?

    public init(caPath: String?, certificatePath: String? = nil, keyPath: String? = nil) {
        self.caPath = caPath
        self.certificatePath = certificatePath
        self.keyPath = keyPath
    }

    /// The transport security for a grpc-swift client: TLS with full verification (the
    /// service's certificate must name the host dialled).
    public var transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
        .tls { config in
            if let caPath = self.caPath { config.trustRoots = .certificates([.file(path: caPath, format: .pem)]) }
            if let certificatePath = self.certificatePath, let keyPath = self.keyPath {
                config.certificateChain = [.file(path: certificatePath, format: .pem)]
                config.privateKey = .file(path: keyPath, format: .pem)
            }
        }
    }

    /// The same, for our libnghttp2 client (`RPCClient`); the files are read now, so a wrong
    /// path fails with what to pass instead.
    public func clientConfiguration() throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        if let caPath = self.caPath {
            do {
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caPath))
            } catch {
                throw SyncError(.configuration, "could not read the CA '\(caPath)' (\(error)): pass a PEM CA certificate with --tls-ca")
            }
        }
        if let certificatePath = self.certificatePath, let keyPath = self.keyPath {
            do {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificatePath).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyPath, format: .pem))
            } catch {
                throw SyncError(.configuration, "could not read the client certificate '\(certificatePath)' or its key "
                                + "'\(keyPath)' (\(error)): pass PEM files with --tls-cert and --tls-key")
            }
        }
        return configuration
    }
}

extension Optional where Wrapped == ClientTLS {
    /// TLS when configured, plaintext h2c otherwise.
    public var transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
        self.map(\.transportSecurity) ?? .plaintext
    }
}
