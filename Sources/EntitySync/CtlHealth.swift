import ArgumentParser
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2

struct Health: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "Ask services for their grpc.health.v1 status; with --wait, wait until all are SERVING.",
        discussion: "Without addresses it asks the producer, user-rpc and org-rpc addresses of the ctl options.")
    @OptionGroup var options: CtlOptions
    @Argument(help: "host:port of each service to ask.") var addresses: [String] = []
    @Option(help: "Seconds to wait until every service is SERVING (0: ask once).") var wait: Double = 0

    func run() async throws {
        let targets = self.addresses.isEmpty
            ? [try self.options.producerAddress, try self.options.userRPCAddress, try self.options.orgRPCAddress]
            : try self.addresses.map { try HostPort($0) }
        let tls = try self.options.tls
        let deadline = ContinuousClock.now + .milliseconds(Int64(max(0, self.wait) * 1000))
        var statuses: [String] = []
        while true {
            statuses = await withTaskGroup(of: (Int, String).self) { group in
                for (index, target) in targets.enumerated() {
                    group.addTask { [tls] in (index, await Self.check(target, tls: tls)) }
                }
                var results = Array(repeating: "", count: targets.count)
                for await (index, status) in group { results[index] = status }
                return results
            }
            if statuses.allSatisfy({ $0 == "SERVING" }) || ContinuousClock.now >= deadline { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        if self.options.json {
            let object = Dictionary(uniqueKeysWithValues: zip(targets.map(\.description), statuses))
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(Table.render(header: ["address", "status"], rows: zip(targets, statuses).map { ["\($0)", $1] }))
        }
        let failing = zip(targets, statuses).filter { $1 != "SERVING" }
        if !failing.isEmpty {
            throw CtlError(description: "not serving: " + failing.map { "\($0) (\($1))" }.joined(separator: ", "))
        }
    }

    /// The status word for one address: SERVING, NOT_SERVING, or why it could not be asked.
    static func check(_ target: HostPort, tls: ClientTLS?) async -> String {
        do {
            // Abandoned after 3 s: the call's own 2 s deadline ends it, but grpc-swift's client can
            // then wait on a connection that never got the server's settings while it shuts down.
            return try await CtlOptions.within(.seconds(3), address: target) {
                try await Self.ask(target, tls: tls)
            }
        } catch let error as RPCError where error.code == .unavailable {
            return "UNREACHABLE"
        } catch let error as RPCError {
            return "\(error.code)"
        } catch is CtlError {
            return "\(RPCError.Code.deadlineExceeded)"
        } catch {
            return "UNREACHABLE"
        }
    }

    private static func ask(_ target: HostPort, tls: ClientTLS?) async throws -> String {
        try await withGRPCClient(transport: .http2NIOPosix(target: .dns(host: target.host, port: target.port),
                                                           transportSecurity: tls.transportSecurity)) { client in
            var options = CallOptions.defaults
            options.timeout = .seconds(2)
            let response = try await Grpc_Health_V1_Health.Client(wrapping: client)
                .check(Grpc_Health_V1_HealthCheckRequest(), options: options)
            switch response.status {
            case .serving: return "SERVING"
            case .notServing: return "NOT_SERVING"
            default: return "UNKNOWN"
            }
        }
    }
}
