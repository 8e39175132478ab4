import AMQPClient
import Foundation
import Synchronization
import Testing

/// The hand-over of deliveries from a broker to a consumer: batches of what has arrived, in
/// order, and the ways a stream ends.
@Suite struct DeliveryStreamTests {
    private struct NoSettler: DeliverySettler {
        func settle(_ settlement: Settlement, tag: UInt64, channel: ChannelRef) async throws {}
    }

    private static func delivery(_ tag: UInt64, epoch: UInt64 = 1) -> Delivery {
        Delivery(body: [], properties: AMQPProperties(), exchange: "", routingKey: "", queue: "q", redelivered: false,
                 deliveryTag: tag, channelRef: ChannelRef(number: 1, epoch: epoch), settler: NoSettler())
    }

    /// Deliveries of a channel incarnation that is gone (the consumer re-subscribed on a new
    /// one) are dropped from the buffer once the new one delivers: the broker requeued them,
    /// they can no longer be acked, and a reader paused on its store must not hold a prefetch
    /// more per reconnect. What the reader already took is its own.
    @Test func deliveriesOfAChannelThatIsGoneAreDroppedWhenItsSuccessorDelivers() async {
        let (stream, continuation) = DeliveryStream.makeStream()
        for tag: UInt64 in 1...4 { continuation.yield(Self.delivery(tag, epoch: 1)) }
        #expect(await stream.nextBatch(maximum: 1)?.map(\.deliveryTag) == [1])
        // The channel was lost and the broker redelivers on the new incarnation, from tag 1.
        for tag: UInt64 in 1...3 { continuation.yield(Self.delivery(tag, epoch: 2)) }
        let batch = await stream.nextBatch(maximum: 10)
        #expect(batch?.map(\.deliveryTag) == [1, 2, 3])
        #expect(batch?.allSatisfy { $0.channelRef.epoch == 2 } == true)
        // Again, with nothing taken in between.
        for tag: UInt64 in 4...5 { continuation.yield(Self.delivery(tag, epoch: 2)) }
        continuation.yield(Self.delivery(1, epoch: 3))
        #expect(await stream.nextBatch(maximum: 10)?.map(\.channelRef.epoch) == [3])
    }

    private final class Terminations: Sendable {
        let seen = Mutex<[DeliveryStream.Termination]>([])
    }

    @Test func aBatchIsWhatHasArrivedUpToTheMaximumInOrder() async {
        let (stream, continuation) = DeliveryStream.makeStream()
        for tag: UInt64 in 1...5 { #expect(continuation.yield(Self.delivery(tag)) == .enqueued) }
        #expect(await stream.nextBatch(maximum: 3)?.map(\.deliveryTag) == [1, 2, 3])
        #expect(await stream.nextBatch(maximum: 3)?.map(\.deliveryTag) == [4, 5])
        continuation.yield(Self.delivery(6))
        #expect(await stream.nextBatch(maximum: 0)?.map(\.deliveryTag) == [6])
    }

    @Test func aFinishedStreamHandsOutWhatItHoldsThenEnds() async {
        let (stream, continuation) = DeliveryStream.makeStream()
        let terminations = Terminations()
        continuation.onTermination = { termination in terminations.seen.withLock { $0.append(termination) } }
        continuation.yield(Self.delivery(1))
        continuation.yield(Self.delivery(2))
        continuation.finish()
        #expect(continuation.yield(Self.delivery(3)) == .terminated)
        #expect(terminations.seen.withLock { $0 } == [.finished])
        var tags: [UInt64] = []
        for await delivery in stream { tags.append(delivery.deliveryTag) }
        #expect(tags == [1, 2])
        #expect(await stream.nextBatch(maximum: 10) == nil)
    }

    @Test func aReaderCancelledWhileWaitingEndsTheStream() async {
        let (stream, continuation) = DeliveryStream.makeStream()
        let terminations = Terminations()
        continuation.onTermination = { termination in terminations.seen.withLock { $0.append(termination) } }
        let reader = Task { await stream.next() }
        reader.cancel()
        #expect(await reader.value == nil)
        #expect(terminations.seen.withLock { $0 } == [.cancelled])
        #expect(continuation.yield(Self.delivery(1)) == .terminated)
    }

    @Test func aCancelledReaderEndsTheStreamEvenWithDeliveriesWaiting() async {
        let (stream, continuation) = DeliveryStream.makeStream()
        let terminations = Terminations()
        continuation.onTermination = { termination in terminations.seen.withLock { $0.append(termination) } }
        continuation.yield(Self.delivery(1))
        let reader = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return await stream.next()
        }
        #expect(await reader.value == nil)
        #expect(terminations.seen.withLock { $0 } == [.cancelled])
        #expect(continuation.yield(Self.delivery(2)) == .terminated)
    }

    /// Taking one at a time while more arrive, then in batches: every delivery once, in order.
    @Test func singleTakesAndBatchesInterleavedWithYieldsKeepTheOrder() async {
        let (stream, continuation) = DeliveryStream.makeStream()
        var tags: [UInt64] = []
        for tag: UInt64 in 1...3000 { continuation.yield(Self.delivery(tag)) }
        for _ in 0..<1500 { if let delivery = await stream.next() { tags.append(delivery.deliveryTag) } }
        for tag: UInt64 in 3001...6000 { continuation.yield(Self.delivery(tag)) }
        for _ in 0..<1500 { if let delivery = await stream.next() { tags.append(delivery.deliveryTag) } }
        continuation.finish()
        while let batch = await stream.nextBatch(maximum: 700) {
            #expect(batch.count <= 700)
            tags.append(contentsOf: batch.map(\.deliveryTag))
        }
        #expect(tags == Array(1...6000))
    }

    @Test func aDroppedStreamTellsItsProducer() {
        var stream: DeliveryStream?
        let continuation: DeliveryStream.Continuation
        do {
            let made = DeliveryStream.makeStream()
            stream = made.stream
            continuation = made.continuation
        }
        let terminations = Terminations()
        continuation.onTermination = { termination in terminations.seen.withLock { $0.append(termination) } }
        continuation.yield(Self.delivery(1))
        #expect(stream != nil)
        stream = nil
        #expect(terminations.seen.withLock { $0 } == [.cancelled])
        #expect(continuation.yield(Self.delivery(2)) == .terminated)
    }

    @Test func aHandlerSetAfterTheEndIsToldAtOnce() {
        let (stream, continuation) = DeliveryStream.makeStream()
        continuation.finish()
        let terminations = Terminations()
        continuation.onTermination = { termination in terminations.seen.withLock { $0.append(termination) } }
        #expect(terminations.seen.withLock { $0 } == [.finished])
        _ = stream
    }

    /// A producer thread yielding while the reader takes batches and waits: no delivery is lost,
    /// repeated or reordered, and no wake-up is missed (the reader would hang).
    @Test func deliveriesFromAnotherThreadArriveAllInOrder() async {
        let (stream, continuation) = DeliveryStream.makeStream()
        let count: UInt64 = 200_000
        Thread.detachNewThread {
            for tag in 1...count {
                continuation.yield(Self.delivery(tag))
                if tag % 1000 == 0 { usleep(50) }
            }
            continuation.finish()
        }
        var expected: UInt64 = 1
        var batches = 0
        var inOrder = true
        while let batch = await stream.nextBatch(maximum: 1024) {
            batches += 1
            #expect(!batch.isEmpty && batch.count <= 1024)
            for delivery in batch {
                if delivery.deliveryTag != expected { inOrder = false }
                expected += 1
            }
        }
        #expect(inOrder)
        #expect(expected == count + 1)
        #expect(batches < Int(count))
    }
}
