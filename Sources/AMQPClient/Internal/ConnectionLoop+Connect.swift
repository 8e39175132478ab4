import CRabbitMQ
import Foundation
import Logging

extension ConnectionLoop {
    /// Opens the socket to `url` and logs in; returns the channel_max the broker granted (0: no
    /// limit). On failure nothing is left behind.
    func open(_ url: AMQPURL) throws(AMQPError) -> Int {
        let operation = AMQPOperation.connect(host: url.host, port: url.port, user: url.user, virtualHost: url.virtualHost)
        guard let connection = amqp_new_connection() else {
            throw AMQPError(.protocolError, "librabbitmq could not allocate a connection (out of memory)")
        }
        var handedOver = false
        defer {
            if !handedOver {
                self.watchdog.setSocket(-1)
                amqp_destroy_connection(connection)
            }
        }
        defer { self.arena.reset() }

        let socket = try self.makeSocket(connection, url: url)
        var connectTimeout = timeval(self.configuration.connectTimeout)
        let connectLimit = self.configuration.connectTimeout + .seconds(5)
        let openStatus = self.guarded("socket open", limit: connectLimit) {
            amqp_socket_open_noblock(socket, url.host, Int32(url.port), &connectTimeout)
        }
        guard openStatus == AMQP_STATUS_OK.rawValue else {
            throw self.socketOpenError(status: openStatus, url: url)
        }
        self.watchdog.setSocket(amqp_get_sockfd(connection))
        _ = amqp_set_handshake_timeout(connection, &connectTimeout)

        var properties = self.arena.table([
            "connection_name": .string(self.configuration.connectionName),
            "product": "EntitySync AMQPClient (librabbitmq)",
            "capabilities": .table([
                "publisher_confirms": true,
                "basic.nack": true,
                "consumer_cancel_notify": true,
                "connection.blocked": true,
                "authentication_failure_close": true,
            ]),
        ])
        let heartbeatSeconds = Int32(self.configuration.heartbeat.components.seconds)
        let channelMax = Int32(ConnectionStateMachine.channelMax)
        let reply = self.guarded("login", limit: connectLimit) {
            crmq_login_plain(connection, url.virtualHost, channelMax, Int32(self.configuration.frameMax), heartbeatSeconds,
                             &properties, url.user, url.password)
        }
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            break
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == CRMQ_CONNECTION_CLOSE:
            let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            throw BrokerErrorTranslator.error(replyCode: close.reply_code, replyText: close.reply_text.string,
                                              operation: operation, user: url.user, virtualHost: url.virtualHost)
        case AMQP_RESPONSE_LIBRARY_EXCEPTION where reply.library_error == AMQP_STATUS_CONNECTION_CLOSED.rawValue:
            throw AMQPError(.authenticationFailed,
                            "the broker at \(url.host):\(url.port) closed the connection during login of user "
                            + "'\(url.user)' to vhost '\(url.virtualHost)': usually a wrong user name or password. "
                            + "Check the credentials in the URL.")
        default:
            throw AMQPError(.protocolError, "login to \(url.host):\(url.port) failed: "
                            + Self.libraryMessage(reply.library_error))
        }
        var rpcTimeout = timeval(self.configuration.operationTimeout)
        _ = amqp_set_rpc_timeout(connection, &rpcTimeout)
        handedOver = true
        self.connection = connection
        return Int(amqp_get_channel_max(connection))
    }

    private func makeSocket(_ connection: amqp_connection_state_t, url: AMQPURL) throws(AMQPError) -> OpaquePointer {
        guard url.useTLS else {
            guard let socket = amqp_tcp_socket_new(connection) else {
                throw AMQPError(.protocolError, "librabbitmq could not create a TCP socket")
            }
            return socket
        }
        guard let socket = amqp_ssl_socket_new(connection) else {
            throw AMQPError(.tlsFailure, "librabbitmq could not create a TLS socket (OpenSSL initialisation failed)")
        }
        let tls = self.configuration.tls
        _ = amqp_ssl_socket_set_ssl_versions(socket, AMQP_TLSv1_2, AMQP_TLSvLATEST)
        if let caPath = tls.caCertificatePath {
            let status = amqp_ssl_socket_set_cacert(socket, caPath)
            guard status == AMQP_STATUS_OK.rawValue else {
                throw AMQPError(.tlsFailure, "could not load the CA certificate file '\(caPath)': "
                                + "\(Self.libraryMessage(status)). Give a readable PEM file (cacertfile).")
            }
        }
        if let certificate = tls.clientCertificatePath {
            guard let key = tls.clientKeyPath else {
                throw AMQPError(.tlsFailure, "a client certificate ('\(certificate)') needs its private key: set keyfile too")
            }
            let status = amqp_ssl_socket_set_key(socket, certificate, key)
            guard status == AMQP_STATUS_OK.rawValue else {
                throw AMQPError(.tlsFailure, "could not load the client certificate '\(certificate)' with key "
                                + "'\(key)': \(Self.libraryMessage(status)). Both must be PEM files that match.")
            }
        }
        amqp_ssl_socket_set_verify_peer(socket, tls.verifyPeer ? 1 : 0)
        amqp_ssl_socket_set_verify_hostname(socket, tls.verifyPeer ? 1 : 0)
        return socket
    }

    private func socketOpenError(status: Int32, url: AMQPURL) -> AMQPError {
        let endpoint = "\(url.host):\(url.port)"
        switch status {
        case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED.rawValue:
            return AMQPError(.hostNotFound, "the broker host '\(url.host)' could not be resolved: check the host in the URL")
        case AMQP_STATUS_TIMEOUT.rawValue:
            return AMQPError(.timeout, "no answer from the broker at \(endpoint) within "
                             + "\(self.configuration.connectTimeout): check the host, port and any firewall")
        case AMQP_STATUS_SSL_ERROR.rawValue, AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue,
             AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue, AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue:
            return AMQPError(.tlsFailure, "the TLS handshake with \(endpoint) failed: \(Self.libraryMessage(status)). "
                             + "Check that the CA file signed the broker's certificate, that the certificate names "
                             + "'\(url.host)', and that the port speaks TLS.")
        default:
            return AMQPError(.connectionRefused, "could not connect to the broker at \(endpoint): "
                             + "\(Self.libraryMessage(status)). Is RabbitMQ running and listening there?")
        }
    }

    static func libraryMessage(_ status: Int32) -> String {
        guard let text = amqp_error_string2(status) else { return "librabbitmq status \(status)" }
        return String(cString: text)
    }
}

extension timeval {
    init(_ duration: Duration) {
        let parts = duration.components
        self.init(tv_sec: Int(parts.seconds), tv_usec: Int(parts.attoseconds / 1_000_000_000_000))
    }
}
