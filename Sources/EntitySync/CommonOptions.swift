import AMQPClient
import ArgumentParser
import EntitySyncCore
import EntitySyncServices
import Foundation
import Logging

/// Reads a setting: the flag if given, else the environment variable, else the default.
func setting(_ flag: String?, _ variable: String, _ fallback: String) -> String {
    flag ?? ProcessInfo.processInfo.environment[variable].flatMap { $0.isEmpty ? nil : $0 } ?? fallback
}

func optionalSetting(_ flag: String?, _ variable: String) -> String? {
    flag ?? ProcessInfo.processInfo.environment[variable].flatMap { $0.isEmpty ? nil : $0 }
}

/// Options every service process takes.
struct ServiceOptions: ParsableArguments {
    @Option(help: "Broker URL, amqp:// or amqps://; for a cluster, the nodes' URLs separated by commas, tried in order (env: ENTITY_SYNC_AMQP_URL; default: amqp://guest:guest@127.0.0.1:5672/).")
    var amqpURL: String?

    @Option(help: "host:port the gRPC server listens on (env: ENTITY_SYNC_LISTEN; default: 127.0.0.1 and the service's port).")
    var listen: String?

    @Option(help: "The store: a SQLite file path, or postgres://USER:PASSWORD@HOST:PORT/DATABASE for instances on several hosts (env: ENTITY_SYNC_DB; default: data/<service>.sqlite).")
    var db: String?

    @Option(help: "Queue type for declared queues: quorum or classic (env: ENTITY_SYNC_QUEUE_TYPE; default: quorum).")
    var queueType: String?

    @Option(help: "host:port serving Prometheus metrics at /metrics (env: ENTITY_SYNC_METRICS_LISTEN; default: off).")
    var metricsListen: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (env: ENTITY_SYNC_LOG_LEVEL; default: info).")
    var logLevel: String?

    @Option(help: "Instance name in logs, events and the broker's connection list (env: ENTITY_SYNC_NAME; default: <service>@<host>).")
    var name: String?

    @Option(help: "Threads serving gRPC connections, each owning the connections it accepts (env: ENTITY_SYNC_RPC_THREADS; default: one per core).")
    var rpcThreads: String?

    @Option(help: "PEM certificate chain: serve gRPC over TLS (with --tls-key), and present it when the service calls another that asks for client certificates (env: ENTITY_SYNC_TLS_CERT; default: plaintext).")
    var tlsCert: String?

    @Option(help: "PEM private key of --tls-cert (env: ENTITY_SYNC_TLS_KEY).")
    var tlsKey: String?

    @Option(help: "PEM CA: clients must present a certificate it signed (mutual TLS; needs --tls-cert) (env: ENTITY_SYNC_TLS_CLIENT_CA; default: no client certificates).")
    var tlsClientCA: String?

    @Option(help: "PEM CA to trust when this service calls another over TLS (a consumer's --producer); setting it turns TLS on for those calls (env: ENTITY_SYNC_TLS_CA; default: plaintext).")
    var tlsCA: String?

    func configuration(service: String, defaultPort: Int) throws -> ServiceConfiguration {
        let queueTypeText = setting(self.queueType, "ENTITY_SYNC_QUEUE_TYPE", "quorum")
        guard let queueType = QueueArguments.QueueType(rawValue: queueTypeText), queueType != .stream else {
            throw ValidationError("--queue-type must be quorum or classic, not '\(queueTypeText)'")
        }
        let amqpURL = setting(self.amqpURL, "ENTITY_SYNC_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
        do {
            _ = try AMQPURL.list(amqpURL)
        } catch {
            throw ValidationError(error.message)
        }
        let listen = try HostPort(setting(self.listen, "ENTITY_SYNC_LISTEN", "127.0.0.1:\(defaultPort)"))
        let host = ProcessInfo.processInfo.hostName
        var configuration = ServiceConfiguration(
            amqpURL: amqpURL, listen: listen,
            database: setting(self.db, "ENTITY_SYNC_DB", "data/\(service).sqlite"),
            topology: SyncTopology(queueType: queueType),
            instanceName: setting(self.name, "ENTITY_SYNC_NAME", "\(service)@\(host)")
        )
        if let text = optionalSetting(self.rpcThreads, "ENTITY_SYNC_RPC_THREADS") {
            guard let threads = Int(text), (1...256).contains(threads) else {
                throw ValidationError("--rpc-threads must be a whole number from 1 to 256, not '\(text)' (default: one per core, "
                                      + "\(ServiceConfiguration.defaultRPCThreads) here)")
            }
            configuration.rpcThreads = threads
        }
        let certificate = optionalSetting(self.tlsCert, "ENTITY_SYNC_TLS_CERT")
        let key = optionalSetting(self.tlsKey, "ENTITY_SYNC_TLS_KEY")
        let clientCA = optionalSetting(self.tlsClientCA, "ENTITY_SYNC_TLS_CLIENT_CA")
        switch (certificate, key) {
        case (let certificate?, let key?):
            configuration.tls = ServerTLS(certificatePath: certificate, keyPath: key, clientCAPath: clientCA)
        case (nil, nil):
            if clientCA != nil { throw ValidationError("--tls-client-ca needs --tls-cert and --tls-key: client certificates are asked for over TLS only") }
        default:
            throw ValidationError("--tls-cert and --tls-key go together: give both to serve TLS, or neither for plaintext")
        }
        if let ca = optionalSetting(self.tlsCA, "ENTITY_SYNC_TLS_CA") {
            configuration.clientTLS = ClientTLS(caPath: ca, certificatePath: certificate, keyPath: key)
        }
        return configuration
    }

    func makeLogger(_ label: String) throws -> Logger {
        let levelText = setting(self.logLevel, "ENTITY_SYNC_LOG_LEVEL", "info")
        guard let level = Logger.Level(rawValue: levelText) else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }

    var metricsAddress: HostPort? {
        get throws { try optionalSetting(self.metricsListen, "ENTITY_SYNC_METRICS_LISTEN").map { try HostPort($0) } }
    }
}
