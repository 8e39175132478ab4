import CRabbitMQ
import Foundation
import Logging

extension ConnectionLoop {
    /// Opens the socket, logs in, opens the control and publish channels, replays the recorded
    /// topology and resumes consumers.
    func establish() throws(AMQPError) {
        let url = self.configuration.url
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

        let socket = try self.makeSocket(connection)
        var connectTimeout = timeval(self.configuration.connectTimeout)
        let connectLimit = self.configuration.connectTimeout + .seconds(5)
        let openStatus = self.guarded("socket open", limit: connectLimit) {
            amqp_socket_open_noblock(socket, url.host, Int32(url.port), &connectTimeout)
        }
        guard openStatus == AMQP_STATUS_OK.rawValue else {
            throw self.socketOpenError(status: openStatus)
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
        let reply = self.guarded("login", limit: connectLimit) {
            crmq_login_plain(connection, url.virtualHost, 2047, Int32(self.configuration.frameMax), heartbeatSeconds,
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
        // 0 means no limit; the broker may also grant fewer channels than asked for.
        let negotiated = amqp_get_channel_max(connection)
        self.channelLimit = negotiated > 0 ? UInt16(clamping: min(Int(negotiated), Int(Self.channelMax))) : Self.channelMax
        var rpcTimeout = timeval(self.configuration.operationTimeout)
        _ = amqp_set_rpc_timeout(connection, &rpcTimeout)

        handedOver = true
        self.connection = connection
        self.connectionCount += 1
        self.reconnectAttempt = 0
        self.lastError = nil
        self.blocked = false
        self.logger.info("amqp connected", metadata: ["amqp.connection_count": "\(self.connectionCount)"])

        try self.openControlChannel()
        try self.openPublishChannel()
        try self.replayTopology()
        // Consumers re-subscribe right away on a fresh connection, whatever backoff they were in.
        for id in self.consumers.keys { self.consumers[id]?.retryAt = nil }
    }

    private func makeSocket(_ connection: amqp_connection_state_t) throws(AMQPError) -> OpaquePointer {
        let url = self.configuration.url
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

    private func socketOpenError(status: Int32) -> AMQPError {
        let url = self.configuration.url
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

    func reconnect() {
        do {
            try self.establish()
        } catch {
            self.lastError = error
            let delay = self.configuration.reconnectBackoff.delay(attempt: self.reconnectAttempt)
            self.reconnectAttempt += 1
            self.nextReconnectAt = .now + delay
            self.logger.warning("amqp reconnect failed", metadata: [
                "error": "\(error.message)", "amqp.retry_in": "\(delay)", "amqp.attempt": "\(self.reconnectAttempt)",
            ])
        }
    }

    /// Tears the connection down after a failure and schedules a reconnect. Unconfirmed publishes
    /// fail with a retryable error; deliveries not yet settled will be redelivered by the broker.
    func connectionFailed(_ error: AMQPError) {
        guard let connection = self.connection else { return }
        self.logger.warning("amqp connection lost", metadata: ["error": "\(error.message)"])
        self.watchdog.setSocket(-1)
        amqp_destroy_connection(connection)
        self.connection = nil
        self.lastError = error
        self.controlChannelOpen = false
        self.publishChannelOpen = false
        self.blocked = false
        let lost = AMQPError(.connectionLost, "the connection to the broker was lost (\(error.message)) before the broker "
                             + "confirmed this publish; it may or may not have been delivered. Retry it: consumers "
                             + "must treat duplicates as normal.", underlying: error)
        for request in self.confirms.reset() { request.fail(lost) }
        for id in self.consumers.keys {
            self.consumers[id]?.channelLost()
            if self.consumers[id]?.cancelled == true { self.consumers[id] = nil }
        }
        let delay = self.configuration.reconnectBackoff.delay(attempt: self.reconnectAttempt)
        self.reconnectAttempt += 1
        self.nextReconnectAt = .now + delay
    }

    func openControlChannel() throws(AMQPError) {
        _ = try self.rpc(.other("open the control channel"), channel: Self.controlChannel) { connection in
            amqp_channel_open(connection, Self.controlChannel)
        }
        self.controlChannelOpen = true
    }

    func openPublishChannel() throws(AMQPError) {
        _ = try self.rpc(.other("open the publishing channel"), channel: Self.publishChannel) { connection in
            amqp_channel_open(connection, Self.publishChannel)
        }
        _ = try self.rpc(.other("enable publisher confirms"), channel: Self.publishChannel) { connection in
            amqp_confirm_select(connection, Self.publishChannel)
        }
        _ = self.confirms.reset()
        self.publishChannelOpen = true
    }

    func ensureControlChannel() throws(AMQPError) {
        if !self.controlChannelOpen { try self.openControlChannel() }
    }

    /// Re-declares what this connection declared before. An entity that can no longer be declared
    /// (an operator changed it meanwhile) is logged and skipped, so one bad queue does not keep
    /// the whole connection down; only a lost connection aborts the replay.
    private func replayTopology() throws(AMQPError) {
        guard self.connectionCount > 1 else { return }
        var failures = 0
        func attempt(_ what: String, _ body: () throws(AMQPError) -> Void) throws(AMQPError) {
            do {
                try body()
            } catch where error.code == .connectionLost {
                throw error
            } catch {
                failures += 1
                self.logger.error("amqp could not re-declare after reconnecting",
                                  metadata: ["amqp.entity": "\(what)", "error": "\(error.message)"])
            }
        }
        for exchange in self.topology.exchanges { try attempt("exchange \(exchange.name)") { () throws(AMQPError) in try self.declare(exchange) } }
        for queue in self.topology.queues { try attempt("queue \(queue.name)") { () throws(AMQPError) in try self.declare(queue) } }
        for binding in self.topology.bindings {
            try attempt("binding \(binding.queue) -> \(binding.exchange)") { () throws(AMQPError) in try self.bind(binding) }
        }
        let counts = "\(self.topology.exchanges.count) exchanges, \(self.topology.queues.count) queues, "
            + "\(self.topology.bindings.count) bindings"
        self.logger.info("amqp topology re-declared", metadata: ["amqp.topology": "\(counts)", "amqp.failures": "\(failures)"])
    }

    /// Runs a synchronous librabbitmq RPC on `channel`. A broker error closes the channel (answered
    /// with close-ok and recorded) or the connection (torn down); either way it is thrown.
    func rpc<Reply>(_ operation: AMQPOperation, channel: UInt16,
                    _ call: (amqp_connection_state_t) -> UnsafeMutablePointer<Reply>?) throws(AMQPError) -> Reply {
        guard let connection = self.connection else {
            throw AMQPError(.connectionLost, "not connected to the broker")
        }
        if let result = self.guarded(operation.summary, { call(connection) }) {
            return result.pointee
        }
        let reply = amqp_get_rpc_reply(connection)
        let url = self.configuration.url
        switch reply.reply_type {
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == CRMQ_CHANNEL_CLOSE:
            let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            let error = BrokerErrorTranslator.error(replyCode: close.reply_code, replyText: close.reply_text.string,
                                                    operation: operation, user: url.user, virtualHost: url.virtualHost)
            self.sendChannelCloseOk(channel)
            self.channelClosed(channel, error: error)
            throw error
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == CRMQ_CONNECTION_CLOSE:
            let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let error = BrokerErrorTranslator.error(replyCode: close.reply_code, replyText: close.reply_text.string,
                                                    operation: operation, user: url.user, virtualHost: url.virtualHost)
            self.sendConnectionCloseOk()
            self.connectionFailed(error)
            // Forced closes and broker-side trouble may pass: the operation is retried after
            // reconnecting. Anything else (NOT_IMPLEMENTED, NOT_ALLOWED, a syntax error) was caused
            // by the operation itself and would close the connection again, every time.
            guard [320, 506, 541].contains(close.reply_code) else { throw error }
            throw AMQPError(.connectionLost, error.message, replyCode: error.replyCode, underlying: error)
        default:
            let error = AMQPError(.connectionLost, "could not \(operation.summary): "
                                  + Self.libraryMessage(reply.library_error))
            self.connectionFailed(error)
            throw error
        }
    }

    func sendChannelCloseOk(_ channel: UInt16) {
        guard let connection = self.connection else { return }
        var closeOk = amqp_channel_close_ok_t(dummy: 0)
        _ = self.guarded("channel.close-ok") { amqp_send_method(connection, channel, CRMQ_CHANNEL_CLOSE_OK, &closeOk) }
    }

    func sendConnectionCloseOk() {
        guard let connection = self.connection else { return }
        var closeOk = amqp_connection_close_ok_t(dummy: 0)
        _ = self.guarded("connection.close-ok") { amqp_send_method(connection, 0, CRMQ_CONNECTION_CLOSE_OK, &closeOk) }
    }

    /// The broker closed `channel` (after it was answered with close-ok): forget its state.
    func channelClosed(_ channel: UInt16, error: AMQPError) {
        switch channel {
        case Self.controlChannel:
            self.controlChannelOpen = false
        case Self.publishChannel:
            self.publishChannelOpen = false
            let missingExchange = Self.missingExchange(in: error)
            for request in self.confirms.reset() {
                if error.code == .notFound, let missingExchange, request.exchange == missingExchange {
                    request.fail(AMQPError(.notFound,
                        "could not publish to exchange '\(request.exchange)': it does not exist in vhost "
                        + "'\(self.configuration.url.virtualHost)'. Declare it first (the producer declares the "
                        + "topology at startup).", replyCode: error.replyCode))
                } else {
                    request.fail(AMQPError(.channelClosed,
                        "the broker closed the publishing channel (\(error.message)) before confirming this "
                        + "publish to '\(request.exchange)'; retry it.", underlying: error))
                }
            }
            self.logger.warning("amqp publishing channel closed by the broker", metadata: ["error": "\(error.message)"])
        default:
            guard let id = self.consumers.first(where: { $0.value.channel == channel })?.key else { return }
            self.consumers[id]?.channelLost()
            self.consumers[id]?.scheduleRetry(backoff: self.configuration.reconnectBackoff)
            if self.consumers[id]?.cancelled == true {
                self.consumers[id] = nil
            } else {
                self.logger.warning("amqp consumer channel closed by the broker; re-subscribing", metadata: [
                    "amqp.queue": "\(self.consumers[id]?.registration.queue ?? "")", "error": "\(error.message)",
                ])
            }
        }
    }

    /// "no exchange 'x' in vhost '/'" → "x".
    static func missingExchange(in error: AMQPError) -> String? {
        guard let start = error.message.range(of: "no exchange '") else { return nil }
        let rest = error.message[start.upperBound...]
        return rest.firstIndex(of: "'").map { String(rest[..<$0]) }
    }
}

extension timeval {
    init(_ duration: Duration) {
        let parts = duration.components
        self.init(tv_sec: Int(parts.seconds), tv_usec: Int(parts.attoseconds / 1_000_000_000_000))
    }
}
