import AMQPClient
import Foundation
import Testing

@Suite(.enabled(if: TestBroker.isAvailable, "needs ENTITY_SYNC_TEST_AMQP_URL (scripts/test sets it)"))
struct ConnectionErrorTests {
    func connectError(_ url: String) async throws -> AMQPError {
        var configuration = try TestBroker.configuration("errors", url: url)
        configuration.connectTimeout = .seconds(5)
        return try await self.connectError(configuration)
    }

    var base: AMQPURL { get throws { try AMQPURL(TestBroker.url ?? "") } }

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
        let connection = try await TestBroker.connect("conflict")
        let queue = TestBroker.uniqueName("conflict")
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
        let connection = try await TestBroker.connect("not_found")
        let queue = TestBroker.uniqueName("absent")
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

    @Test(.enabled(if: TestBroker.tlsURL != nil && TestBroker.tlsDirectory != nil, "needs the TLS listener of scripts/test"))
    func tlsVerifiesTheBrokerCertificate() async throws {
        let tlsURL = try #require(TestBroker.tlsURL)
        let directory = try #require(TestBroker.tlsDirectory)
        var trusted = try TestBroker.configuration("tls", url: tlsURL)
        trusted.tls = .init(caCertificatePath: "\(directory)/ca.pem")
        let connection = try await AMQPConnection.connect(trusted, logger: TestBroker.logger("tls"))
        let scratch = Scratch("tls")
        try await scratch.declare(on: connection, arguments: QueueArguments(queueType: .classic))
        try await connection.publish(message("over tls"), exchange: scratch.exchange)
        await scratch.remove(on: connection)
        await connection.close()

        var withClientCertificate = trusted
        withClientCertificate.tls.clientCertificatePath = "\(directory)/client.pem"
        withClientCertificate.tls.clientKeyPath = "\(directory)/client.key"
        let second = try await AMQPConnection.connect(withClientCertificate, logger: TestBroker.logger("tls"))
        await second.close()

        var untrusted = trusted
        untrusted.tls = .init(caCertificatePath: "\(directory)/other-ca.pem")
        let error = try await self.connectError(untrusted)
        #expect(error.code == .tlsFailure)
    }

    func connectError(_ configuration: AMQPConfiguration) async throws -> AMQPError {
        do {
            let connection = try await AMQPConnection.connect(configuration, logger: TestBroker.logger("errors"))
            await connection.close()
            throw TestFailure("connecting succeeded")
        } catch let error as AMQPError {
            return error
        }
    }
}

func freePort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw TestFailure("socket() failed") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic -> Int32 in
            guard bind(descriptor, generic, length) == 0 else { return -1 }
            return getsockname(descriptor, generic, &length)
        }
    }
    guard bound == 0 else { throw TestFailure("bind() failed") }
    return Int(UInt16(bigEndian: address.sin_port))
}
