// Publishes N persistent messages of S bytes to a durable fanout exchange bound to two durable
// queues, with at most W publishes unconfirmed on the wire (the connection's confirm window), and
// prints the rate. The benchmark keeps 2W publish calls in flight so that, as in the C program's
// loop, the next message is already queued when a confirm frees the window; the window alone
// bounds what is outstanding at the broker.
//
//   amqp-publish-bench --url amqp://guest:guest@127.0.0.1:5672/ --count 20000 --size 1024 \
//       --window 512 --queue-type quorum
import AMQPClient
import Foundation
import Logging

struct Options {
    var url = "amqp://guest:guest@127.0.0.1:5672/"
    var count = 20_000
    var size = 1024
    var window = 512
    var queueType = QueueArguments.QueueType.quorum

    init(arguments: [String]) throws {
        var iterator = arguments.dropFirst().makeIterator()
        while let flag = iterator.next() {
            guard let value = iterator.next() else { throw UsageError("\(flag) needs a value") }
            switch flag {
            case "--url": self.url = value
            case "--count": self.count = try Self.positive(value, flag)
            case "--size": self.size = try Self.positive(value, flag)
            case "--window": self.window = try Self.positive(value, flag)
            case "--queue-type":
                guard let type = QueueArguments.QueueType(rawValue: value) else {
                    throw UsageError("--queue-type must be quorum or classic")
                }
                self.queueType = type
            default: throw UsageError("unknown option \(flag)")
            }
        }
    }

    static func positive(_ text: String, _ flag: String) throws -> Int {
        guard let value = Int(text), value > 0 else { throw UsageError("\(flag) must be a positive integer") }
        return value
    }
}

struct UsageError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

let options: Options
do {
    options = try Options(arguments: CommandLine.arguments)
} catch {
    FileHandle.standardError.write(Data("amqp-publish-bench: \(error)\nusage: amqp-publish-bench [--url URL] [--count N] [--size BYTES] [--window W] [--queue-type quorum|classic]\n".utf8))
    exit(2)
}

var configuration = try AMQPConfiguration(url: options.url, connectionName: "amqp-publish-bench")
configuration.confirmWindow = options.window
configuration.publishTimeout = .seconds(120)
var logger = Logger(label: "amqp-publish-bench")
logger.logLevel = .warning
let connection = try await AMQPConnection.connect(configuration, logger: logger)

let suffix = UUID().uuidString.prefix(8).lowercased()
let exchange = "bench_\(suffix)"
let queues = ["bench_\(suffix)_a", "bench_\(suffix)_b"]
try await connection.declare(ExchangeSpec(name: exchange))
for queue in queues {
    try await connection.declare(QueueSpec(name: queue, arguments: QueueArguments(queueType: options.queueType)))
    try await connection.bind(BindingSpec(queue: queue, exchange: exchange))
}

let body = [UInt8](repeating: 0x61, count: options.size)
let workers = min(2 * options.window, options.count)
let start = ContinuousClock.now
try await withThrowingTaskGroup(of: Void.self) { group in
    for worker in 0..<workers {
        let share = options.count / workers + (worker < options.count % workers ? 1 : 0)
        group.addTask {
            for _ in 0..<share {
                try await connection.publish(OutgoingMessage(body: body), exchange: exchange)
            }
        }
    }
    try await group.waitForAll()
}
let elapsed = start.duration(to: .now)
let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
let rate = Double(options.count) / seconds
print(String(format: "client=swift queues=2x%@ window=%d size=%d count=%d seconds=%.2f rate=%.0f msg/s",
             options.queueType.rawValue, options.window, options.size, options.count, seconds, rate))

for queue in queues { try await connection.deleteQueue(queue) }
try await connection.deleteExchange(exchange)
await connection.close()
