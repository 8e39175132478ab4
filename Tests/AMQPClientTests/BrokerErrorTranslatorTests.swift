@testable import AMQPClient
import Testing

@Suite struct BrokerErrorTranslatorTests {
    func translate(_ code: UInt16, _ text: String, _ operation: AMQPOperation = .other("x")) -> AMQPError {
        BrokerErrorTranslator.error(replyCode: code, replyText: text, operation: operation, user: "svc", virtualHost: "prod")
    }

    @Test func queueArgumentMismatchNamesQueueAndArgument() {
        let text = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'orders' in vhost 'prod': "
            + "received 'classic' but current is 'quorum'"
        let error = self.translate(406, text, .declareQueue("orders"))
        #expect(error.code == .preconditionFailed)
        #expect(error.message.contains("queue 'orders'"))
        #expect(error.message.contains("'x-queue-type'"))
        #expect(error.message.contains("received 'classic' but current is 'quorum'"))
        #expect(error.message.contains("delete the queue"))
    }

    @Test func loginRefusalIsAuthentication() {
        let error = self.translate(403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
                                   .connect(host: "h", port: 1, user: "svc", virtualHost: "prod"))
        #expect(error.code == .authenticationFailed)
        #expect(error.message.contains("'svc'"))
    }

    @Test func accessRefusedAfterLoginSaysWhichPermission() {
        let error = self.translate(403, "ACCESS_REFUSED - write access to exchange 'x' denied", .publish(exchange: "x"))
        #expect(error.code == .accessRefused)
        #expect(error.message.contains("set_permissions"))
    }

    @Test func missingVirtualHost() {
        let error = self.translate(530, "NOT_ALLOWED - vhost prod not found")
        #expect(error.code == .virtualHostNotFound)
        #expect(error.message.contains("add_vhost"))
        #expect(self.translate(530, "NOT_ALLOWED - access to vhost 'prod' refused for user 'svc'").code == .accessRefused)
    }

    @Test func notFoundAndOthers() {
        let error = self.translate(404, "NOT_FOUND - no queue 'q' in vhost 'prod'", .inspectQueue("q"))
        #expect(error.code == .notFound)
        #expect(error.message.contains("no queue 'q' in vhost 'prod'"))
        #expect(!error.message.contains("NOT_FOUND -"))
        #expect(self.translate(320, "CONNECTION_FORCED - Closed via management plugin").code == .connectionLost)
        #expect(self.translate(405, "RESOURCE_LOCKED - cannot obtain exclusive access").code == .resourceLocked)
        #expect(self.translate(541, "INTERNAL_ERROR").code == .protocolError)
    }

    @Test func missingExchangeIsExtracted() {
        let error = AMQPError(.notFound, "could not publish: no exchange 'exchange_user' in vhost '/'")
        #expect(ConnectionLoop.missingExchange(in: error) == "exchange_user")
    }
}
