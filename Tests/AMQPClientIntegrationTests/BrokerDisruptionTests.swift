import AMQPClient
import EntitySyncTestSupport
import Foundation
import Testing

/// Faults that hit every connection on the broker. `scripts/test` runs this suite on its own,
/// after the others, so no other test's connections are disturbed.
@Suite(.serialized, .enabled(if: Broker.isAvailable, "needs a private broker (scripts/test starts one)"))
struct BrokerDisruptionTests {
    /// Publishes (retrying retryable failures, as a caller should) while one consumer acks, and
    /// injects `fault` twice mid-stream, each time awaiting reconnection of both connections and
    /// resumed publishing. Every confirmed message must be delivered.
    func runThroughFaults(_ name: String, heartbeat: Duration = .seconds(10),
                          fault: @escaping @Sendable () async throws -> Void) async throws {
        let configure: (inout AMQPConfiguration) -> Void = {
            $0.heartbeat = heartbeat
            $0.publishTimeout = .seconds(20)
            $0.operationTimeout = .seconds(10)
            $0.connectTimeout = .seconds(3)
        }
        let publisher = try await Broker.connect("\(name)_publisher", configure: configure)
        let subscriber = try await Broker.connect("\(name)_consumer", configure: configure)
        let scratch = Scratch(name)
        try await scratch.declare(on: publisher)
        try await scratch.declare(on: subscriber)

        let received = Collector<String>()
        let consumer = try await subscriber.consume(queue: scratch.queue, prefetch: 20)
        let consuming = Task {
            for await delivery in consumer.deliveries {
                await received.add(delivery.text)
                // An ack may fail when the connection just dropped; the broker redelivers then.
                try? await delivery.ack()
            }
        }

        let confirmed = Collector<String>()
        let failures = Collector<String>()
        let faultsOver = Gate()
        let publishing = Task {
            var index = 0
            while await !faultsOver.isOpen {
                let text = "\(name)-\(index)"
                do {
                    try await publisher.publish(message(text, id: text), exchange: scratch.exchange)
                    await confirmed.add(text)
                    index += 1
                } catch let error as AMQPError where error.isRetryable {
                    await failures.add("\(error.code)")
                }
                // Paced so a run stays small; not a synchronisation point.
                try await Task.sleep(for: .milliseconds(2))
            }
        }

        for round in 1...2 {
            try await eventually("publishing under way before fault \(round)") { await confirmed.count >= 50 * round }
            let publisherConnections = try await publisher.status().connectionCount
            let subscriberConnections = try await subscriber.status().connectionCount
            try await fault()
            try await eventually("both connections recovered after fault \(round)", timeout: .seconds(60)) {
                let publisherStatus = try await publisher.status()
                let subscriberStatus = try await subscriber.status()
                return publisherStatus.connectionCount > publisherConnections && publisherStatus.isConnected
                    && subscriberStatus.connectionCount > subscriberConnections && subscriberStatus.activeConsumers == 1
            }
            let before = await confirmed.count
            try await eventually("publishing resumed after fault \(round)") { await confirmed.count > before + 20 }
        }
        await faultsOver.open()
        try await publishing.value

        let expected = await confirmed.set
        try await eventually("every confirmed message delivered", timeout: .seconds(60)) {
            await received.set.isSuperset(of: expected)
        }

        await consumer.cancel()
        await consuming.value
        await scratch.remove(on: publisher)
        await subscriber.close()
        await publisher.close()
    }

    @Test func recoversWhenTheBrokerClosesAllConnections() async throws {
        try await self.runThroughFaults("close_all") {
            try Broker.ctl("close_all_connections", "closed by a test")
        }
    }

    @Test func recoversAfterBrokerStopAndStartApp() async throws {
        try await self.runThroughFaults("restart") {
            try Broker.ctl("stop_app")
            try Broker.ctl("start_app")
        }
    }

    @Test func detectsAFrozenBrokerAndRecovers() async throws {
        // SIGSTOP keeps TCP connections open but silent: only missed heartbeats (and the
        // watchdog on blocked sends) reveal it. Heartbeat 1 s → detected after about 2 s.
        let pidNumber = try Broker.pid()
        try await self.runThroughFaults("frozen", heartbeat: .seconds(1)) {
            kill(pidNumber, SIGSTOP)
            // Frozen for over two heartbeat intervals: the connections must be declared dead.
            try await Task.sleep(for: .seconds(4))
            kill(pidNumber, SIGCONT)
        }
    }
}
