// Reply-to-visible latency: creates users through the producer's EntityAdmin at a fixed rate
// (open loop: a slow reply does not slow the schedule) and, after each reply, asks user-rpc and
// org-rpc to WaitForVersion the new user. One mutation's latency is the time from its reply to
// the later of the two WaitForVersion replies. Prints one line of results; with --samples,
// writes every latency (ms) to a file.
//
// usage: ingest-latency PRODUCER USER_RPC ORG_RPC --rate R --count N [--prefix P] [--samples FILE]
//
// The same measurement as Benchmarks/ingest_latency.py, on the HTTP/2 client `ctl import` uses:
// at a few hundred mutations a second grpcio's asyncio client took more CPU than any service it
// measured, on a machine whose two cores it shared with them.
import EntitySyncGRPC
import EntitySyncProto
import Foundation
import GRPCCore
import HTTP2RPC

struct Arguments {
    var producer = "", userRPC = "", orgRPC = ""
    var rate = 0.0
    var count = 0
    var prefix = "lat"
    var samples: String?

    static func parse(_ words: [String]) -> Arguments? {
        var arguments = Arguments()
        var positional: [String] = []
        var index = 0
        while index < words.count {
            let word = words[index]
            if word.hasPrefix("--") {
                guard index + 1 < words.count else { return nil }
                let value = words[index + 1]
                switch word {
                case "--rate": guard let rate = Double(value), rate > 0 else { return nil }; arguments.rate = rate
                case "--count": guard let count = Int(value), count > 0 else { return nil }; arguments.count = count
                case "--prefix": arguments.prefix = value
                case "--samples": arguments.samples = value
                default: return nil
                }
                index += 2
            } else {
                positional.append(word)
                index += 1
            }
        }
        guard positional.count == 3, arguments.rate > 0, arguments.count > 0 else { return nil }
        (arguments.producer, arguments.userRPC, arguments.orgRPC) = (positional[0], positional[1], positional[2])
        return arguments
    }
}

func client(_ address: String) throws -> RPCClient {
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
        throw RPCError(code: .invalidArgument, message: "'\(address)' is not HOST:PORT")
    }
    return try RPCClient(host: String(address[..<colon]), port: port)
}

enum Outcome: Sendable {
    case latency(Double)
    case failure(String)
}

func milliseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
}

func percentile(_ sorted: [Double], _ fraction: Double) -> Double {
    sorted[min(sorted.count - 1, Int(fraction * Double(sorted.count)))]
}

guard let arguments = Arguments.parse(Array(CommandLine.arguments.dropFirst())) else {
    FileHandle.standardError.write(Data("usage: ingest-latency PRODUCER USER_RPC ORG_RPC --rate R --count N [--prefix P] [--samples FILE]\n".utf8))
    exit(2)
}

let producer = try client(arguments.producer)
let waiters = [try client(arguments.userRPC), try client(arguments.orgRPC)]
let clock = ContinuousClock()

/// One mutation: its reply-to-visible latency, or why it failed.
@Sendable func one(_ index: Int) async -> Outcome {
    var request = Entitysync_V1_CreateUserRequest()
    request.user.id = "\(arguments.prefix)\(index)"
    request.user.name = "Latency"
    request.user.email = "l\(index)@example.com"
    do {
        let created: Entitysync_V1_User = try await producer.unary(Entitysync_V1_EntityAdmin.Method.CreateUser.descriptor, request)
        let replied = clock.now
        var wait = Entitysync_V1_WaitForVersionRequest()
        wait.entityType = .user
        wait.entityID = created.id
        wait.version = created.version
        wait.timeoutMs = 30_000
        try await withThrowingTaskGroup(of: Void.self) { [wait] group in
            for waiter in waiters {
                group.addTask {
                    let _: Entitysync_V1_WaitForVersionResponse = try await waiter.unary(
                        Entitysync_V1_SyncInfo.Method.WaitForVersion.descriptor, wait)
                }
            }
            try await group.waitForAll()
        }
        return .latency(milliseconds(clock.now - replied))
    } catch let error as RPCError {
        return .failure("\(error.code): \(error.message)")
    } catch {
        return .failure("\(error)")
    }
}

let started = clock.now
let outcomes = await withTaskGroup(of: Outcome.self, returning: [Outcome].self) { group in
    for index in 0..<arguments.count {
        let due = started + .nanoseconds(Int64(Double(index) / arguments.rate * 1e9))
        if due > clock.now { try? await Task.sleep(until: due, clock: clock) }
        group.addTask { await one(index) }
    }
    var outcomes: [Outcome] = []
    outcomes.reserveCapacity(arguments.count)
    for await outcome in group { outcomes.append(outcome) }
    return outcomes
}
let elapsed = milliseconds(clock.now - started) / 1000
await producer.close()
for waiter in waiters { await waiter.close() }

var latencies: [Double] = []
var failures: [String] = []
for outcome in outcomes {
    switch outcome {
    case .latency(let value): latencies.append(value)
    case .failure(let reason): failures.append(reason)
    }
}
guard failures.isEmpty else {
    FileHandle.standardError.write(Data("ingest-latency: \(failures.count) of \(arguments.count) mutations failed, e.g. \(failures[0])\n".utf8))
    exit(1)
}
if let path = arguments.samples {
    let text = latencies.map { String(format: "%.3f\n", $0) }.joined()
    guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) else {
        FileHandle.standardError.write(Data("ingest-latency: cannot write the samples to '\(path)'\n".utf8))
        exit(1)
    }
}
latencies.sort()
print(String(format: "rate=%.0f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f", Double(arguments.count) / elapsed,
             percentile(latencies, 0.5), percentile(latencies, 0.9), percentile(latencies, 0.99), latencies[latencies.count - 1]))
