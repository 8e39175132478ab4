import AMQPClient
import EntitySyncTestSupport
import Foundation
import Testing

/// Needs rabbitmqctl (users, permissions, connection listing) but disturbs no other connection.
@Suite(.enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct BrokerPermissionTests {
    @Test func userWithoutPermissionsGetsAccessRefused() async throws {
        let base = try AMQPURL(Broker.url ?? "")
        let user = Broker.uniqueName("user")
        try Broker.ctl("add_user", user, "secret")
        defer { _ = try? Broker.ctl("delete_user", user) }

        // No permissions at all on the vhost: refused at connection time.
        var configuration = try Broker.configuration("no_vhost_access",
                                                         url: "amqp://\(user):secret@\(base.host):\(base.port)/")
        configuration.connectTimeout = .seconds(5)
        do {
            let connection = try await AMQPConnection.connect(configuration, logger: Broker.logger("perm"))
            await connection.close()
            Issue.record("a user without vhost permissions connected")
        } catch let error as AMQPError {
            #expect(error.code == .accessRefused)
            #expect(error.message.contains("set_permissions"))
        }

        // May read and write nothing, configure nothing: declaring is refused, naming the user.
        try Broker.ctl("set_permissions", "-p", "/", user, "^$", "^$", "^$")
        let connection = try await AMQPConnection.connect(configuration, logger: Broker.logger("perm"))
        let exchange = Broker.uniqueName("forbidden")
        do {
            try await connection.declare(ExchangeSpec(name: exchange))
            Issue.record("a user without configure permission declared an exchange")
        } catch let error as AMQPError {
            #expect(error.code == .accessRefused)
            #expect(error.message.contains("'\(user)'"))
            #expect(error.message.contains("'\(exchange)'"))
        }
        await connection.close()
    }

    @Test func connectionNameIsShownByTheBroker() async throws {
        let name = Broker.uniqueName("named")
        let connection = try await Broker.connect("named") { $0.connectionName = name }
        let listing = try Broker.ctl("list_connections", "client_properties")
        #expect(listing.contains(name))
        await connection.close()
    }
}
