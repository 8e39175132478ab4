import EntitySyncCore
import NIOSSL

/// TLS for a service's gRPC listener: its certificate chain and key (PEM files), and optionally
/// a CA whose certificates clients must present.
public struct ServerTLS: Sendable, Equatable {
    public var certificatePath: String
    public var keyPath: String
    /// When set, a client must present a certificate signed by this CA (mutual TLS).
    public var clientCAPath: String?

    public init(certificatePath: String, keyPath: String, clientCAPath: String? = nil) {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.clientCAPath = clientCAPath
    }

    /// TLS 1.2 or later with ALPN h2; the files are read now, so a wrong path fails the start.
    func serverConfiguration() throws -> TLSConfiguration {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(self.certificatePath)
        } catch {
            throw SyncError(.configuration, "could not read the TLS certificate '\(self.certificatePath)' (\(error)): "
                            + "pass a PEM certificate chain with --tls-cert")
        }
        do {
            key = try NIOSSLPrivateKey(file: self.keyPath, format: .pem)
        } catch {
            throw SyncError(.configuration, "could not read the TLS private key '\(self.keyPath)' (\(error)): "
                            + "pass its PEM private key with --tls-key")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                                     privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["h2"]
        if let clientCAPath = self.clientCAPath {
            do {
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(clientCAPath))
            } catch {
                throw SyncError(.configuration, "could not read the client CA '\(clientCAPath)' (\(error)): "
                                + "pass a PEM CA certificate with --tls-client-ca")
            }
            configuration.certificateVerification = .noHostnameVerification
        }
        return configuration
    }
}
