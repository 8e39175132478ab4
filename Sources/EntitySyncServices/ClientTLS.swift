import GRPCNIOTransportHTTP2

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
}

extension Optional where Wrapped == ClientTLS {
    /// TLS when configured, plaintext h2c otherwise.
    public var transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
        self.map(\.transportSecurity) ?? .plaintext
    }
}
