import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
@testable import EntitySyncServices
import EntitySyncTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Testing

/// Sends whatever bytes it is given: lets a test put malformed bodies on the wire.
struct RawBytesSerializer: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes { Bytes(message) }
}

struct RawBytesDeserializer: MessageDeserializer {
    func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> [UInt8] {
        serializedMessageBytes.withUnsafeBytes { Array($0) }
    }
}

/// Requests no client library would send, to every service: each must get the right status
/// code, change nothing, and leave the server serving.
@Suite(.serialized, .enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct HostileInputTests {
    /// Every unary method of the four services (streaming ones are sent the same bytes below
    /// through the same path; they fail before streaming).
    static let methods = Entitysync_V1_EntityAdmin.Method.descriptors + Entitysync_V1_UserQuery.Method.descriptors
        + Entitysync_V1_OrgQuery.Method.descriptors + Entitysync_V1_SyncInfo.Method.descriptors

    /// The service that serves `method` in a RunningSystem.
    static func port(for method: MethodDescriptor, in system: RunningSystem) async throws -> Int {
        switch method.service {
        case Entitysync_V1_EntityAdmin.descriptor: try await system.producer.address.port()
        case Entitysync_V1_OrgQuery.descriptor: try await system.orgRPC[0].address.port()
        default: try await system.userRPC[0].address.port()
        }
    }

    /// Sends `body` as the request of `method`; returns the status code (nil for OK).
    static func send(_ body: [UInt8], to method: MethodDescriptor, client: GRPCClient<HTTP2ClientTransport.Posix>,
                     metadata: Metadata) async -> RPCError.Code? {
        var options = CallOptions.defaults
        options.timeout = .seconds(10)
        return await statusCode {
            _ = try await client.unary(request: ClientRequest(message: body, metadata: metadata), descriptor: method,
                                       serializer: RawBytesSerializer(), deserializer: RawBytesDeserializer(),
                                       options: options) { try $0.message }
        }
    }

    /// Bodies that cannot be decoded as any request: random bytes after a field-0 tag (never
    /// valid), a request cut inside a nested message, a string field holding invalid UTF-8, and
    /// 100,000 nested groups.
    static func undecodableBodies() throws -> [(String, [UInt8])] {
        var random = SystemRandomNumberGenerator()
        var bodies: [(String, [UInt8])] = (0..<20).map { index in
            ("random \(index)", [0x00] + (0..<Int.random(in: 1...512, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) })
        }
        let valid: [UInt8] = try userRequest("truncated", name: String(repeating: "n", count: 200)).serializedBytes()
        bodies.append(("truncated", Array(valid.prefix(valid.count / 2))))
        // Field 15 as a start-group tag, 100,000 times: nesting far beyond any decoder's limit.
        bodies.append(("deeply nested", Array(repeating: 0x7B, count: 100_000)))
        return bodies
    }

    @Test func undecodableBodiesGetInvalidArgumentOnEveryMethod() async throws {
        let system = try await RunningSystem.start("hostile")
        let bodies = try Self.undecodableBodies()
        for method in Self.methods {
            let port = try await Self.port(for: method, in: system)
            try await system.withClient(port) { client in
                for (name, body) in bodies {
                    let code = await Self.send(body, to: method, client: client, metadata: system.authorized)
                    #expect(code == .invalidArgument, "\(method) with a \(name) body: \(String(describing: code))")
                }
            }
        }
        // Strings that are not UTF-8: GetRequest.id, and CreateUserRequest.user.id.
        let producerPort = try await system.producer.address.port()
        try await system.withClient(producerPort) { client in
            for (method, body): (MethodDescriptor, [UInt8]) in [
                (Entitysync_V1_EntityAdmin.Method.GetUser.descriptor, [0x0A, 0x02, 0xFF, 0xFE]),
                (Entitysync_V1_EntityAdmin.Method.CreateUser.descriptor, [0x0A, 0x04, 0x0A, 0x02, 0xC3, 0x28]),
            ] {
                let code = await Self.send(body, to: method, client: client, metadata: system.authorized)
                #expect(code == .invalidArgument, "\(method) with invalid UTF-8: \(String(describing: code))")
            }
        }
        try await self.expectServingAndUnchanged(system, users: 0)
        try await system.stop()
    }

    @Test func unknownMethodsAndServicesAreUnimplemented() async throws {
        let system = try await RunningSystem.start("unknown")
        let port = try await system.producer.address.port()
        try await system.withClient(port) { client in
            for method in [MethodDescriptor(fullyQualifiedService: "entitysync.v1.EntityAdmin", method: "DropEverything"),
                           MethodDescriptor(fullyQualifiedService: "no.such.Service", method: "Get"),
                           MethodDescriptor(fullyQualifiedService: "entitysync.v1.UserQuery", method: "GetUser")] {
                #expect(await Self.send([], to: method, client: client, metadata: system.authorized) == .unimplemented, "\(method)")
            }
        }
        try await self.expectServingAndUnchanged(system, users: 0)
        try await system.stop()
    }

    /// A caller without the token learns nothing from its request: a message over the size
    /// limit or one that cannot be decoded gets UNAUTHENTICATED on every protected method, the
    /// same as a valid one; with the token the same bodies meet their own errors.
    @Test func aCallWithoutTheTokenIsRefusedBeforeItsRequestIsRead() async throws {
        let system = try await RunningSystem.start("admission")
        let oversized = [UInt8](repeating: 0x41, count: 4 * 1024 * 1024 + 16)
        let undecodable: [UInt8] = [0x00, 0xFF, 0xFF]
        for method in EntityAdminService.mutations.union(SyncInfoService.mutations) {
            let port = try await Self.port(for: method, in: system)
            try await system.withClient(port) { client in
                for (name, body) in [("oversized", oversized), ("undecodable", undecodable)] {
                    let anonymous = await Self.send(body, to: method, client: client, metadata: [:])
                    #expect(anonymous == .unauthenticated, "\(method), \(name), no token: \(String(describing: anonymous))")
                    let wrong = await Self.send(body, to: method, client: client, metadata: ["authorization": "Bearer not-it"])
                    #expect(wrong == .unauthenticated, "\(method), \(name), wrong token: \(String(describing: wrong))")
                }
                let tooLarge = await Self.send(oversized, to: method, client: client, metadata: system.authorized)
                #expect(tooLarge == .resourceExhausted, "\(method), oversized, with the token: \(String(describing: tooLarge))")
            }
        }
        try await self.expectServingAndUnchanged(system, users: 0)
        try await system.stop()
    }

    /// Sizes a client controls: page sizes, page tokens, repeated fields, map entries, strings.
    @Test func enormousSizesAreRefusedWithTheLimitInTheMessage() async throws {
        let system = try await RunningSystem.start("sizes")
        let producerPort = try await system.producer.address.port()
        let metadata = system.authorized
        try await system.withClient(producerPort) { client in
            let admin = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            _ = try await admin.createUser(userRequest("ada"), metadata: metadata)
            for size: Int32 in [Int32.max, -1, 1001] {
                var list = Entitysync_V1_ListRequest()
                list.pageSize = size
                #expect(await statusCode { _ = try await admin.listUsers(list) } == .invalidArgument, "page_size \(size)")
            }
            var token = Entitysync_V1_ListRequest()
            token.pageToken = String(repeating: "A", count: 1_000_000)
            let tokenCode = await statusCode { _ = try await admin.listGroups(token) }
            #expect(tokenCode == .invalidArgument, "\(String(describing: tokenCode))")

            var group = Entitysync_V1_CreateGroupRequest()
            group.group.id = "everyone"
            group.group.name = "Everyone"
            group.group.memberIds = (0..<200_000).map { "u\($0)" }
            let request = group
            #expect(await statusCode { _ = try await admin.createGroup(request, metadata: metadata) } == .invalidArgument)
            var members = Entitysync_V1_GroupMembersRequest()
            members.groupID = "everyone"
            members.userIds = Array(repeating: "ada", count: 200_000)
            let add = members
            #expect(await statusCode { _ = try await admin.addGroupMembers(add, metadata: metadata) } == .invalidArgument)

            var attributes = userRequest("bob")
            for index in 0..<50_000 { attributes.user.attributes["k\(index)"] = "v" }
            let many = attributes
            #expect(await statusCode { _ = try await admin.createUser(many, metadata: metadata) } == .invalidArgument)
            var name = userRequest("cyd")
            name.user.name = String(repeating: "n", count: 100_000)
            let long = name
            #expect(await statusCode { _ = try await admin.createUser(long, metadata: metadata) } == .invalidArgument)

            var huge = userRequest("huge")
            huge.user.attributes["blob"] = String(repeating: "x", count: 5 * 1024 * 1024)
            let oversized = huge
            // grpc-swift's transport resets the stream as soon as the length prefix is over the limit,
            // before reading the body; its clients report that as UNAVAILABLE, others as CANCELLED.
            let oversizedCode = await statusCode { _ = try await admin.createUser(oversized, metadata: metadata) }
            #expect(oversizedCode == .resourceExhausted || oversizedCode == .unavailable, "\(String(describing: oversizedCode))")
        }
        try await self.expectServingAndUnchanged(system, users: 1)
        try await system.stop()
    }

    /// Every mutation, with no token, malformed ones and wrong ones: UNAUTHENTICATED each time,
    /// and the stores are exactly as before.
    @Test func everyMutationRefusesMissingMalformedAndWrongTokens() async throws {
        let system = try await RunningSystem.start("tokens")
        let producerPort = try await system.producer.address.port()
        try await system.withClient(producerPort) { client in
            let admin = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            _ = try await admin.createUser(userRequest("ada"), metadata: system.authorized)
            var group = Entitysync_V1_CreateGroupRequest()
            group.group.id = "eng"
            group.group.name = "Engineering"
            _ = try await admin.createGroup(group, metadata: system.authorized)
        }
        var attempts: [(String, Metadata)] = [("none", Metadata())]
        for (name, value) in [("empty", ""), ("scheme only", "Bearer"), ("scheme and space", "Bearer "),
                              ("no scheme", RunningSystem.token), ("basic", "Basic \(RunningSystem.token)"),
                              ("wrong", "Bearer nope"), ("prefix of the token", "Bearer \(RunningSystem.token.dropLast())"),
                              ("token and more", "Bearer \(RunningSystem.token)x"), ("two spaces", "Bearer  \(RunningSystem.token)")] {
            var metadata = Metadata()
            metadata.addString(value, forKey: "authorization")
            attempts.append((name, metadata))
        }
        var binary = Metadata()
        binary.addBinary(Array("Bearer \(RunningSystem.token)".utf8), forKey: "authorization-bin")
        attempts.append(("binary header", binary))

        // A valid body for each mutation, so only the token can be what is refused.
        var user = Entitysync_V1_UpdateUserRequest()
        user.user = userRequest("ada", name: "Mallory").user
        var groupUpdate = Entitysync_V1_UpdateGroupRequest()
        groupUpdate.group.id = "eng"
        groupUpdate.group.name = "Owned"
        var delete = Entitysync_V1_DeleteRequest()
        delete.id = "ada"
        var deleteGroup = Entitysync_V1_DeleteRequest()
        deleteGroup.id = "eng"
        var members = Entitysync_V1_GroupMembersRequest()
        members.groupID = "eng"
        members.userIds = ["ada"]
        var newGroup = Entitysync_V1_CreateGroupRequest()
        newGroup.group.id = "evil"
        newGroup.group.name = "Evil"
        let mutations: [(MethodDescriptor, [UInt8])] = [
            (Entitysync_V1_EntityAdmin.Method.CreateUser.descriptor, try userRequest("mallory").serializedBytes()),
            (Entitysync_V1_EntityAdmin.Method.UpdateUser.descriptor, try user.serializedBytes()),
            (Entitysync_V1_EntityAdmin.Method.DeleteUser.descriptor, try delete.serializedBytes()),
            (Entitysync_V1_EntityAdmin.Method.CreateGroup.descriptor, try newGroup.serializedBytes()),
            (Entitysync_V1_EntityAdmin.Method.UpdateGroup.descriptor, try groupUpdate.serializedBytes()),
            (Entitysync_V1_EntityAdmin.Method.DeleteGroup.descriptor, try deleteGroup.serializedBytes()),
            (Entitysync_V1_EntityAdmin.Method.AddGroupMembers.descriptor, try members.serializedBytes()),
            (Entitysync_V1_EntityAdmin.Method.RemoveGroupMembers.descriptor, try members.serializedBytes()),
            (Entitysync_V1_SyncInfo.Method.RedriveDeadLetters.descriptor, try Entitysync_V1_RedriveDeadLettersRequest().serializedBytes()),
            (Entitysync_V1_SyncInfo.Method.ListDeadLetters.descriptor, try Entitysync_V1_ListDeadLettersRequest().serializedBytes()),
        ]
        #expect(Set(mutations.map(\.0)) == Set(Array(EntityAdminService.mutations) + Array(SyncInfoService.mutations)),
                "the list covers every protected method")
        let allAttempts = attempts
        for (method, body) in mutations {
            let port = try await Self.port(for: method, in: system)
            try await system.withClient(port) { client in
                for (name, metadata) in allAttempts {
                    let code = await Self.send(body, to: method, client: client, metadata: metadata)
                    #expect(code == .unauthenticated, "\(method) with \(name) token: \(String(describing: code))")
                }
                // The token is checked before the request is read: an undecodable one is refused for the token.
                let garbage = await Self.send([0x00, 0xFF, 0x13, 0x37], to: method, client: client, metadata: Metadata())
                #expect(garbage == .unauthenticated, "\(method) with no token and an undecodable body: \(String(describing: garbage))")
            }
        }
        try await self.expectServingAndUnchanged(system, users: 1, groups: ["eng": 1], ada: 1)
        try await system.stop()
    }

    /// The producer and both groups still answer, and hold what the test made and nothing else.
    func expectServingAndUnchanged(_ system: RunningSystem, users: Int, groups: [String: UInt64] = [:], ada: UInt64? = nil) async throws {
        let producerPort = try await system.producer.address.port()
        try await system.withClient(producerPort) { client in
            let admin = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            let listed = try await admin.listUsers(Entitysync_V1_ListRequest())
            #expect(listed.users.count == users, "\(listed.users.map(\.id))")
            if let ada { #expect(listed.users.first { $0.id == "ada" }?.version == ada) }
            let listedGroups = try await admin.listGroups(Entitysync_V1_ListRequest()).groups
            #expect(Dictionary(uniqueKeysWithValues: listedGroups.map { ($0.id, $0.version) }) == groups)
            let health = try await Grpc_Health_V1_Health.Client(wrapping: client).check(Grpc_Health_V1_HealthCheckRequest())
            #expect(health.status == .serving)
        }
        for instance in system.userRPC + system.orgRPC {
            let port = try await instance.address.port()
            let status = try await system.withClient(port) { client in
                try await Grpc_Health_V1_Health.Client(wrapping: client).check(Grpc_Health_V1_HealthCheckRequest()).status
            }
            #expect(status == .serving)
        }
    }

    /// Floods of concurrent streams from h2load against the built producer: well-formed calls,
    /// and oversized ones. The server answers every well-formed call, keeps serving, and its
    /// memory does not grow with the flood.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/h2load")
                   && FileManager.default.isExecutableFile(atPath: entitySyncBinary), "needs h2load (nghttp2-client) and the built binary"))
    func floodsOfConcurrentStreamsLeaveTheServerServingWithBoundedMemory() async throws {
        let host = try TestVirtualHost("flood")
        defer { host.tearDown() }
        let (producer, port) = try Self.startBuiltProducer(host)
        defer { producer.signal(SIGKILL) }
        try await eventually("producer SERVING") {
            return await healthStatus(port: port) == .serving
        }
        func grpcFrame(_ message: [UInt8]) -> [UInt8] {
            let length = UInt32(message.count)
            return [0, UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF)] + message
        }
        var get = Entitysync_V1_GetRequest()
        get.id = "nobody"
        let small = host.directory + "/get.bin"
        try Data(grpcFrame(try get.serializedBytes())).write(to: URL(fileURLWithPath: small))

        let before = try Self.memory(of: producer.pid)
        let calls = try Self.h2load(port: port, path: "/entitysync.v1.EntityAdmin/GetUser", body: small,
                                    requests: 20_000, clients: 8, streams: 100)
        #expect(calls.contains("20000 succeeded"), "\(calls)")
        // Oversized requests, 100 of them 20 at a time (h2load stalls on the streams the server resets).
        let refused = try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port),
                                                                         transportSecurity: .plaintext)) { client in
            let admin = Entitysync_V1_EntityAdmin.Client(wrapping: client)
            var huge = userRequest("huge")
            huge.user.attributes["blob"] = String(repeating: "x", count: 6 * 1024 * 1024)
            let request = huge
            var metadata = Metadata()
            metadata.addString("Bearer \(RunningSystem.token)", forKey: "authorization")
            let authorized = metadata
            return try await withThrowingTaskGroup(of: Bool.self) { group in
                var refused = 0
                for index in 0..<100 {
                    if index >= 20, let one = try await group.next(), one { refused += 1 }
                    group.addTask { await statusCode { _ = try await admin.createUser(request, metadata: authorized) } != nil }
                }
                for try await one in group where one { refused += 1 }
                return refused
            }
        }
        #expect(refused == 100)
        let after = try Self.memory(of: producer.pid)
        print("flood: \(refused) oversized refused; producer RSS \(before.rss / 1024) MiB before, \(after.rss / 1024) MiB after, peak \(after.peak / 1024) MiB; "
              + (calls.split(separator: "\n").first { $0.contains("finished in") } ?? ""))
        #expect(after.rss < before.rss + 256 * 1024, "resident memory grew from \(before.rss) KiB to \(after.rss) KiB")

        #expect(await healthStatus(port: port) == .serving)
        #expect(producer.isRunning)
    }

    /// 100 connections with 100 streams each in flight (10,000 calls at once) against the built
    /// user-rpc's event-loop answers (GetUser on its SQLite replica, Health/Check): every call is
    /// answered, and memory stays bounded.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/h2load")
                   && FileManager.default.isExecutableFile(atPath: entitySyncBinary), "needs h2load (nghttp2-client) and the built binary"))
    func tenThousandStreamsInFlightAreAllAnswered() async throws {
        let host = try TestVirtualHost("streams")
        defer { host.tearDown() }
        try FileManager.default.createDirectory(atPath: host.directory, withIntermediateDirectories: true)
        let port = try freePort()
        let userRPC = try ChildProcess(entitySyncBinary, ["user-rpc", "--listen", "127.0.0.1:\(port)", "--db", host.path("user-rpc")],
                                       environment: ProcessInfo.processInfo.environment.merging([
                                           "ENTITY_SYNC_AMQP_URL": host.url,
                                       ]) { $1 }, log: host.directory + "/user-rpc.log")
        defer { userRPC.signal(SIGKILL) }
        try await eventually("user-rpc SERVING") { await healthStatus(port: port) == .serving }
        var get = Entitysync_V1_GetRequest()
        get.id = "nobody"
        let message: [UInt8] = try get.serializedBytes()
        let body = host.directory + "/get.bin"
        try Data([0, 0, 0, 0, UInt8(message.count)] + message).write(to: URL(fileURLWithPath: body))
        let health = host.directory + "/health.bin"
        try Data([0, 0, 0, 0, 0]).write(to: URL(fileURLWithPath: health))

        let before = try Self.memory(of: userRPC.pid)
        let calls = try Self.h2load(port: port, path: "/entitysync.v1.UserQuery/GetUser", body: body,
                                    requests: 30_000, clients: 100, streams: 100)
        #expect(calls.contains("30000 succeeded, 0 failed, 0 errored"), "\(calls)")
        let checks = try Self.h2load(port: port, path: "/grpc.health.v1.Health/Check", body: health,
                                     requests: 30_000, clients: 100, streams: 100)
        #expect(checks.contains("30000 succeeded, 0 failed, 0 errored"), "\(checks)")
        let after = try Self.memory(of: userRPC.pid)
        print("10,000 streams in flight: user-rpc RSS \(before.rss / 1024) MiB before, \(after.rss / 1024) MiB after, "
              + "peak \(after.peak / 1024) MiB; " + (calls.split(separator: "\n").first { $0.contains("finished in") } ?? ""))
        #expect(after.peak < before.rss + 256 * 1024, "peak resident memory \(after.peak) KiB from \(before.rss) KiB")
        // What h2load counted as answered are real answers: NOT_FOUND for the user, SERVING for health.
        let code = try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port),
                                                                      transportSecurity: .plaintext)) { client in
            await statusCode { _ = try await Entitysync_V1_UserQuery.Client(wrapping: client).getUser(get) }
        }
        #expect(code == .notFound)
        #expect(await healthStatus(port: port) == .serving)
        #expect(userRPC.isRunning)
    }

    /// A client that stops reading a server stream (the Snapshot, over raw HTTP/2, never
    /// opening its flow-control window) leaves the producer's memory bounded: the handler waits
    /// instead of queueing the whole snapshot. Meanwhile others get the whole snapshot.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: entitySyncBinary), "needs the built binary"))
    func aClientThatStopsReadingAStreamCostsBoundedMemory() async throws {
        let host = try TestVirtualHost("stalled")
        defer { host.tearDown() }
        let (producer, port) = try Self.startBuiltProducer(host)
        defer { producer.signal(SIGKILL) }
        try await eventually("producer SERVING") { await healthStatus(port: port) == .serving }
        // 1,500 users of 14 KB each: a snapshot of about 21 MB.
        let name = String(repeating: "n", count: 14_000)
        let rows = (0..<1500).map { "{\"type\":\"user\",\"id\":\"u\($0)\",\"name\":\"\(name)\",\"email\":\"u\($0)@example.com\"}" }
        let file = host.directory + "/users.jsonl"
        try rows.joined(separator: "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let imported = try ChildProcess.run(entitySyncBinary, ["ctl", "import", file, "--producer", "127.0.0.1:\(port)",
                                                               "--token", RunningSystem.token])
        #expect(imported.succeeded, "\(imported.output)")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("python/stalled_stream_check.py")
        let check = try ChildProcess.run("/usr/bin/env", ["python3", script.path, "127.0.0.1:\(port)", "\(producer.pid)"])
        #expect(check.succeeded && check.output.contains("stalled stream: ok"), "\(check.output)")
        print(check.output.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(await healthStatus(port: port) == .serving)
        #expect(producer.isRunning)
    }

    /// The built binary's producer in `host`'s vhost and folder, with the test token, on a free port.
    static func startBuiltProducer(_ host: TestVirtualHost) throws -> (ChildProcess, Int) {
        try FileManager.default.createDirectory(atPath: host.directory, withIntermediateDirectories: true)
        let port = try freePort()
        let producer = try ChildProcess(entitySyncBinary, ["producer", "--listen", "127.0.0.1:\(port)", "--db", host.path("producer")],
                                        environment: ProcessInfo.processInfo.environment.merging([
                                            "ENTITY_SYNC_AMQP_URL": host.url, "ENTITY_SYNC_TOKEN": RunningSystem.token,
                                        ]) { $1 }, log: host.directory + "/producer.log")
        return (producer, port)
    }

    /// Resident and peak resident memory of a process, in KiB.
    static func memory(of pid: pid_t) throws -> (rss: Int, peak: Int) {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        func value(_ key: String) -> Int {
            status.split(separator: "\n").first { $0.hasPrefix(key) }
                .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") } ?? 0
        }
        return (value("VmRSS:"), value("VmHWM:"))
    }

    /// Runs h2load with gRPC's headers; returns its output.
    static func h2load(port: Int, path: String, body: String, requests: Int, clients: Int, streams: Int) throws -> String {
        try ChildProcess.shell("h2load -n \(requests) -c \(clients) -m \(streams) -H 'content-type: application/grpc' -H 'te: trailers' "
                         + "-d '\(body)' http://127.0.0.1:\(port)\(path) 2>&1")
    }
}
