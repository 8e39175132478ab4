import AMQPClient
import EntitySyncTestSupport
import Foundation
import Testing

@Suite(.enabled(if: Broker.isConfigured, "needs ENTITY_SYNC_TEST_AMQP_URL (scripts/test sets it)"))
struct ConnectionErrorTests {
    func connectError(_ url: String) async throws -> AMQPError {
        var configuration = try Broker.configuration("errors", url: url)
        configuration.connectTimeout = .seconds(5)
        return try await self.connectError(configuration)
    }

    var base: AMQPURL { get throws { try AMQPURL(Broker.url ?? "") } }

    @Test func connectionRefusedNamesHostAndPort() async throws {
        // A port nobody listens on: bind one, note it, release it.
        let port = try freePort()
        let error = try await self.connectError("amqp://guest:guest@127.0.0.1:\(port)/")
        #expect(error.code == .connectionRefused)
        #expect(error.message.contains("127.0.0.1:\(port)"))
    }

    @Test func wrongPasswordIsAuthenticationFailure() async throws {
        let base = try self.base
        let error = try await self.connectError("amqp://guest:wrong@\(base.host):\(base.port)/")
        #expect(error.code == .authenticationFailed)
        #expect(error.message.contains("'guest'"))
    }

    @Test func missingVirtualHost() async throws {
        let base = try self.base
        let error = try await self.connectError("amqp://guest:guest@\(base.host):\(base.port)/no-such-vhost")
        #expect(error.code == .virtualHostNotFound)
        #expect(error.message.contains("'no-such-vhost'"))
    }

    @Test func conflictingQueueArgumentsNameTheQueueAndArgument() async throws {
        let connection = try await Broker.connect("conflict")
        let queue = Broker.uniqueName("conflict")
        try await connection.declare(QueueSpec(name: queue, arguments: QueueArguments(queueType: .quorum)))
        try await connection.declare(QueueSpec(name: queue, arguments: QueueArguments(queueType: .quorum)))
        do {
            try await connection.declare(QueueSpec(name: queue, arguments: QueueArguments(queueType: .classic)))
            Issue.record("redeclaring with another queue type succeeded")
        } catch let error as AMQPError {
            #expect(error.code == .preconditionFailed)
            #expect(error.message.contains("queue '\(queue)'"))
            #expect(error.message.contains("'x-queue-type'"))
        }
        // The failed declare closed the channel it ran on; the connection carries on.
        #expect(try await connection.queueStatus(queue).messageCount == 0)
        try await connection.deleteQueue(queue)
        await connection.close()
    }

    @Test func missingQueueIsNotFound() async throws {
        let connection = try await Broker.connect("not_found")
        let queue = Broker.uniqueName("absent")
        do {
            _ = try await connection.queueStatus(queue)
            Issue.record("a missing queue was found")
        } catch let error as AMQPError {
            #expect(error.code == .notFound)
            #expect(error.message.contains("'\(queue)'"))
        }
        do {
            _ = try await connection.consume(queue: queue)
            Issue.record("consuming a missing queue succeeded")
        } catch let error as AMQPError {
            #expect(error.code == .notFound)
        }
        await connection.close()
    }

    @Test(.enabled(if: Broker.tlsURL != nil && Broker.tlsDirectory != nil, "needs the TLS listener of scripts/test"))
    func tlsVerifiesTheBrokerCertificate() async throws {
        let tlsURL = try #require(Broker.tlsURL)
        let directory = try #require(Broker.tlsDirectory)
        var trusted = try Broker.configuration("tls", url: tlsURL)
        trusted.tls = .init(caCertificatePath: "\(directory)/ca.pem")
        let connection = try await AMQPConnection.connect(trusted, logger: Broker.logger("tls"))
        let scratch = Scratch("tls")
        try await scratch.declare(on: connection, arguments: QueueArguments(queueType: .classic))
        try await connection.publish(message("over tls"), exchange: scratch.exchange)
        await scratch.remove(on: connection)
        await connection.close()

        var withClientCertificate = trusted
        withClientCertificate.tls.clientCertificatePath = "\(directory)/client.pem"
        withClientCertificate.tls.clientKeyPath = "\(directory)/client.key"
        let second = try await AMQPConnection.connect(withClientCertificate, logger: Broker.logger("tls"))
        await second.close()

        var untrusted = trusted
        untrusted.tls = .init(caCertificatePath: "\(directory)/other-ca.pem")
        let error = try await self.connectError(untrusted)
        #expect(error.code == .tlsFailure)
    }

    func connectError(_ configuration: AMQPConfiguration) async throws -> AMQPError {
        do {
            let connection = try await AMQPConnection.connect(configuration, logger: Broker.logger("errors"))
            await connection.close()
            throw HarnessError("connecting succeeded")
        } catch let error as AMQPError {
            return error
        }
    }
}
