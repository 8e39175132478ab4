import Synchronization

/// One consumer's deliveries in the order they arrived: a broker implementation fills it through
/// its `Continuation`, and a reader takes them one at a time (it is an `AsyncSequence`) or as a
/// batch of every delivery that has arrived (`nextBatch(maximum:)`).
///
/// In place of an `AsyncStream` and a task that regrouped it into batches: handing a delivery
/// over is an append under a lock, and the reader is woken only when it waits on an empty
/// buffer, so a backlog costs one wake-up per batch instead of up to two per delivery.
///
/// Like an `AsyncStream`, the stream ends with `.cancelled` (buffered deliveries dropped, the
/// termination handler told) when the task reading it one at a time is cancelled while it waits,
/// or when the stream is dropped before it finished; `yield` then answers `.terminated`.
public final class DeliveryStream: AsyncSequence, Sendable {
    public typealias Element = Delivery
    public typealias Failure = Never

    /// Why a stream ended.
    public enum Termination: Sendable { case finished, cancelled }
    /// Whether a yielded delivery was taken in, or the stream had ended.
    public enum YieldResult: Sendable { case enqueued, terminated }

    /// The producer's side: yields deliveries and finishes the stream.
    public struct Continuation: Sendable {
        fileprivate let storage: Storage

        /// Appends a delivery for the reader; `.terminated` if the stream ended (nobody reads it).
        @discardableResult
        public func yield(_ delivery: Delivery) -> YieldResult {
            self.storage.yield(delivery)
        }

        /// Ends the stream once the reader has taken what is buffered.
        public func finish() {
            self.storage.end(.finished)
        }

        /// Told once when the stream ends, with why.
        public var onTermination: (@Sendable (Termination) -> Void)? {
            get { self.storage.state.withLock { $0.onTermination } }
            nonmutating set { self.storage.setOnTermination(newValue) }
        }
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        fileprivate let stream: DeliveryStream

        public mutating func next() async -> Delivery? {
            await self.stream.next()
        }
    }

    fileprivate struct State {
        /// Deliveries not taken yet are `buffer[head...]`: taking one at a time moves `head`
        /// instead of shifting the array.
        var buffer: [Delivery] = []
        var head = 0
        /// Set once the stream ended, with why.
        var termination: Termination?
        var waiter: CheckedContinuation<Void, Never>?
        var onTermination: (@Sendable (Termination) -> Void)?
        /// The channel incarnation of the last delivery yielded.
        var channel: ChannelRef?
    }

    fileprivate final class Storage: Sendable {
        let state = Mutex(State())

        func yield(_ delivery: Delivery) -> YieldResult {
            let result = self.state.withLock { state -> (YieldResult, CheckedContinuation<Void, Never>?) in
                guard state.termination == nil else { return (.terminated, nil) }
                // A consumer has one channel at a time: a delivery on a new incarnation means the
                // old one is gone, and the broker has requeued what it delivered there. Those
                // copies can no longer be acked; applying them would only repeat work, and a
                // consumer paused on its store would otherwise hold a prefetch more per reconnect.
                if let previous = state.channel, previous != delivery.channelRef {
                    state.buffer.removeFirst(state.head)
                    state.head = 0
                    state.buffer.removeAll { $0.channelRef != delivery.channelRef }
                }
                state.channel = delivery.channelRef
                state.buffer.append(delivery)
                defer { state.waiter = nil }
                return (.enqueued, state.waiter)
            }
            result.1?.resume()
            return result.0
        }

        /// Ends the stream (once); cancellation also drops what is buffered.
        func end(_ termination: Termination) {
            let ended = self.state.withLock { state -> (CheckedContinuation<Void, Never>?, (@Sendable (Termination) -> Void)?)? in
                if termination == .cancelled {
                    state.buffer.removeAll()
                    state.head = 0
                }
                guard state.termination == nil else { return nil }
                state.termination = termination
                defer {
                    state.waiter = nil
                    state.onTermination = nil
                }
                return (state.waiter, state.onTermination)
            }
            guard let (waiter, handler) = ended else { return }
            waiter?.resume()
            handler?(termination)
        }

        func setOnTermination(_ handler: (@Sendable (Termination) -> Void)?) {
            let ended = self.state.withLock { state -> Termination? in
                if state.termination == nil { state.onTermination = handler }
                return state.termination
            }
            // A handler set after the end is told at once, so no end goes unnoticed.
            if let ended { handler?(ended) }
        }

        /// Up to `maximum` buffered deliveries; `.some(nil)` once ended and drained; nil if none yet.
        func take(_ maximum: Int) -> [Delivery]?? {
            self.state.withLock { state -> [Delivery]?? in
                let available = state.buffer.count - state.head
                guard available > 0 else { return state.termination != nil ? .some(nil) : nil }
                if state.head == 0 && available <= maximum {
                    defer { state.buffer = [] }
                    return .some(state.buffer)
                }
                let count = Swift.min(maximum, available)
                let batch = Array(state.buffer[state.head ..< state.head + count])
                state.head += count
                if state.head == state.buffer.count {
                    state.buffer.removeAll(keepingCapacity: true)
                    state.head = 0
                } else if state.head >= 1024 && state.head * 2 >= state.buffer.count {
                    state.buffer.removeFirst(state.head)
                    state.head = 0
                }
                return .some(batch)
            }
        }

        /// Waits until a delivery or the end is there (at once if it already is).
        func wait() async {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = self.state.withLock { state -> Bool in
                    if state.buffer.count > state.head || state.termination != nil { return true }
                    // Two readers would overwrite each other's wake-up and one would hang.
                    precondition(state.waiter == nil, "a DeliveryStream has one reader at a time")
                    state.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        }
    }

    private let storage: Storage

    private init(storage: Storage) {
        self.storage = storage
    }

    deinit {
        // Nobody can read it any more: a producer must learn it, as from an AsyncStream.
        self.storage.end(.cancelled)
    }

    /// A stream and the continuation that fills it.
    public static func makeStream() -> (stream: DeliveryStream, continuation: Continuation) {
        let storage = Storage()
        return (DeliveryStream(storage: storage), Continuation(storage: storage))
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(stream: self)
    }

    /// The next delivery, or nil once the stream ended (or the calling task was cancelled while
    /// it waited, which ends the stream).
    public func next() async -> Delivery? {
        // As an AsyncStream: a cancelled reader ends the stream even while deliveries keep
        // coming, so that its consumer is abandoned and they go back to the queue.
        if Task.isCancelled {
            self.storage.end(.cancelled)
            return nil
        }
        while true {
            if let taken = self.storage.take(1) { return taken?.first }
            let storage = self.storage
            await withTaskCancellationHandler {
                await storage.wait()
            } onCancel: {
                storage.end(.cancelled)
            }
        }
    }

    /// Every delivery that has arrived, up to `maximum` (at least one; waits only when none has),
    /// or nil once the stream ended and all were taken. One reader at a time. Cancellation is not
    /// observed: end the stream by cancelling the consumer.
    public func nextBatch(maximum: Int) async -> [Delivery]? {
        let maximum = Swift.max(1, maximum)
        while true {
            if let taken = self.storage.take(maximum) { return taken }
            await self.storage.wait()
        }
    }
}
