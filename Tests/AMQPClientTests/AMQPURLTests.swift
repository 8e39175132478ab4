import AMQPClient
import Testing

@Suite struct AMQPURLTests {
    @Test func fullURL() throws {
        let url = try AMQPURL("amqp://alice:s%40cret@broker.example:5673/prod?heartbeat=5")
        #expect(url.useTLS == false)
        #expect(url.user == "alice")
        #expect(url.password == "s@cret")
        #expect(url.host == "broker.example")
        #expect(url.port == 5673)
        #expect(url.virtualHost == "prod")
        #expect(url.query["heartbeat"] == "5")
    }

    @Test(arguments: [
        ("amqp://h", "/"), ("amqp://h/", "/"), ("amqp://h/%2F", "/"), ("amqp://h/%2Fapp", "/app"), ("amqp://h/a%20b", "a b"),
    ])
    func virtualHosts(text: String, expected: String) throws {
        #expect(try AMQPURL(text).virtualHost == expected)
    }

    @Test func defaults() throws {
        let plain = try AMQPURL("amqp://")
        #expect(plain.host == "127.0.0.1")
        #expect(plain.port == 5672)
        #expect(plain.user == "guest" && plain.password == "guest")
        let tls = try AMQPURL("amqps://h")
        #expect(tls.useTLS && tls.port == 5671)
    }

    @Test func ipv6() throws {
        let url = try AMQPURL("amqp://u:p@[::1]:5999/")
        #expect(url.host == "::1")
        #expect(url.port == 5999)
        #expect(url.description == "amqp://u:***@[::1]:5999/")
    }

    @Test(arguments: ["http://h/", "amqp://h:0/", "amqp://h:70000/", "amqp://h:abc/", "amqp://h/a/b", "amqp://[::1/"])
    func rejectsMalformed(text: String) {
        #expect(throws: AMQPError.self) { try AMQPURL(text) }
        do {
            _ = try AMQPURL(text)
        } catch {
            #expect(error.code == .invalidURL)
            #expect(error.message.contains("amqp://user:password@host:port/vhost"))
        }
    }

    @Test func errorsAndDescriptionsHideThePassword() throws {
        #expect(try AMQPURL("amqp://u:topsecret@h/").description.contains("topsecret") == false)
        do {
            _ = try AMQPURL("amqp://u:topsecret@h:99999/")
            Issue.record("expected an error")
        } catch {
            #expect(!error.message.contains("topsecret"))
            #expect(error.message.contains("99999"))
        }
    }

    @Test func configurationReadsQuery() throws {
        let configuration = try AMQPConfiguration(
            url: "amqps://h/?heartbeat=3&connection_timeout=2500&cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&verify=verify_none&connection_name=x")
        #expect(configuration.heartbeat == .seconds(3))
        #expect(configuration.connectTimeout == .milliseconds(2500))
        #expect(configuration.tls.caCertificatePath == "/ca.pem")
        #expect(configuration.tls.clientCertificatePath == "/c.pem")
        #expect(configuration.tls.clientKeyPath == "/k.pem")
        #expect(configuration.tls.verifyPeer == false)
        #expect(configuration.connectionName == "x")
    }

    @Test func aClusterIsACommaSeparatedListTriedInOrder() throws {
        let configuration = try AMQPConfiguration(url: "amqp://a:pa@n1:5672/?heartbeat=4, amqp://b:pb@n2:5673/,amqps://c:pc@n3/")
        #expect(configuration.urls.map(\.host) == ["n1", "n2", "n3"])
        #expect(configuration.urls.map(\.port) == [5672, 5673, 5671])
        #expect(configuration.urls[1].user == "b")
        #expect(configuration.url.host == "n1")
        #expect(configuration.heartbeat == .seconds(4))
    }

    @Test(arguments: ["amqp://a:secret1@n1/,", "amqp://a:secret1@n1/,,amqp://b:secret2@n2/", "amqp://a:secret1@n1/,http://b:secret2@n2/"])
    func aBadListIsAClearErrorWithoutPasswords(list: String) {
        do {
            _ = try AMQPConfiguration(url: list)
            Issue.record("accepted \(list)")
        } catch {
            #expect(error.code == .invalidURL)
            #expect(!error.message.contains("secret1") && !error.message.contains("secret2"), "\(error.message)")
        }
    }
}
