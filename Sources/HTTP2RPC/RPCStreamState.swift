import GRPCCore
import NIOCore

/// One HTTP/2 stream of a connection: an entry in its connection's table, touched on the
/// connection's event loop only.
final class RPCStreamState {
    enum Kind {
        /// Headers not complete yet.
        case pending
        /// Answered on the loop once the request has arrived.
        case immediate(RPCRoutes.ImmediateHandler)
        /// Answered by a task started once the request has arrived.
        case task(RPCRoutes.TaskHandler)
        /// Its task is running; the reply comes back to the loop.
        case running
        /// Handed to the grpc-swift services; parts flow through `inbound`.
        case bridged
        /// Already answered with an error; whatever else the client sends is dropped.
        case rejected
    }

    /// What follows a response's data.
    enum Trailers {
        /// `grpc-status: 0` alone.
        case ok
        case custom([(name: String, value: String)])
    }

    let id: Int32
    var kind = Kind.pending
    var path = ""
    /// The server's own handler for the method, known as soon as `:path` is.
    var route: RPCRoutes.Handler?
    /// Answered on the loop: its metadata is not kept.
    var isImmediate: Bool {
        if case .immediate? = self.route { return true }
        return false
    }
    var isPost = false
    /// The method, kept only when it is not POST (for the error message).
    var method = ""
    var contentTypeIsGRPC = false
    /// The content type, kept only when it is not gRPC's (for the error message).
    var contentType: String?
    /// A `grpc-encoding` other than identity.
    var encoding: String?
    var timeout: String?
    var headers: [(name: String, value: String)] = []
    var headerBytes = 0
    /// Request bytes not yet taken as messages.
    var body: [UInt8] = []
    var bodyOffset = 0
    /// Request bytes of this stream counted against its connection's limit.
    var heldRequestBytes = 0
    var requestEnded = false

    // The response, in the order it goes out: headers, messages, trailers.
    var responseStarted = false
    var outbound: [UInt8] = []
    var outboundOffset = 0
    /// The length of a unary reply kept in `outbound` as its handler made it, whose 5-byte
    /// message prefix goes out first without copying the reply behind it; nil once sent.
    var outboundPrefixLength: UInt32?
    /// How many bytes of that prefix went out already.
    var outboundPrefixSent = 0
    var trailers: Trailers?
    /// The status is queued (or sent); later writes are refused.
    var finished = false
    /// The data provider returned DEFERRED and waits for `nghttp2_session_resume_data`.
    var deferred = false

    /// The task answering a call of a task route.
    var task: Task<Void, Never>?

    // Bridged streams only.
    var inbound: AsyncThrowingStream<RPCRequestPart<[UInt8]>, any Error>.Continuation?
    var cancellation: ServerContext.RPCCancellationHandle?
    var cancelled = false
    var waitingWriters: [CheckedContinuation<Void, any Error>] = []
    /// The call's `grpc-timeout`, for bridged and task calls.
    var deadline: Scheduled<Void>?

    // Links of the connection's list of open streams.
    fileprivate var next: RPCStreamState?
    // Unowned: the previous state holds this one through `next`, and unlinking clears both.
    fileprivate unowned(unsafe) var previous: RPCStreamState?
    /// In its connection's list (from the request's HEADERS until the stream closes).
    fileprivate(set) var isListed = false

    init(id: Int32) {
        self.id = id
    }

    /// A connection's open streams, linked through the states: inserting and removing one
    /// allocates and hashes nothing. The list holds each state until it is removed.
    struct List {
        private var first: RPCStreamState?

        var isEmpty: Bool { self.first == nil }

        mutating func insert(_ state: RPCStreamState) {
            precondition(!state.isListed, "stream \(state.id) is listed already")
            state.next = self.first
            self.first?.previous = state
            self.first = state
            state.isListed = true
        }

        mutating func remove(_ state: RPCStreamState) {
            guard state.isListed else { return }
            if let previous = state.previous {
                previous.next = state.next
            } else {
                self.first = state.next
            }
            state.next?.previous = state.previous
            state.next = nil
            state.previous = nil
            state.isListed = false
        }

        /// Empties the list; the states it held, most recent first.
        mutating func removeAll() -> [RPCStreamState] {
            var states: [RPCStreamState] = []
            while let state = self.first {
                self.remove(state)
                states.append(state)
            }
            return states
        }
    }

    var pendingOutboundBytes: Int {
        self.outbound.count - self.outboundOffset + (self.outboundPrefixLength == nil ? 0 : GRPCWire.prefixLength - self.outboundPrefixSent)
    }

    /// Puts `message` out as the stream's one reply message, behind its prefix.
    func setUnaryReply(_ message: [UInt8]) {
        self.outbound = message
        self.outboundOffset = 0
        self.outboundPrefixLength = UInt32(truncatingIfNeeded: message.count)
        self.outboundPrefixSent = 0
    }

    /// Moves up to `length` pending bytes, a unary reply's prefix first, to `buffer` (nghttp2's
    /// DATA payload); how many.
    func takeOutbound(into buffer: UnsafeMutablePointer<UInt8>, length: Int) -> Int {
        let prefix = self.takePrefix(into: buffer, length: length)
        let count = min(length - prefix, self.outbound.count - self.outboundOffset)
        guard count > 0 else { return prefix }
        self.outbound.withUnsafeBytes { bytes in
            UnsafeMutableRawBufferPointer(start: buffer + prefix, count: count)
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[self.outboundOffset..<self.outboundOffset + count]))
        }
        self.outboundOffset += count
        if self.outboundOffset == self.outbound.count {
            // Kept for more messages only while the call goes on; a finished reply may be a
            // shared array (a fixed Health reply), whose capacity would be a fresh allocation.
            if self.trailers == nil, self.outbound.count <= 64 * 1024 {
                self.outbound.removeAll(keepingCapacity: true)
            } else {
                self.outbound = []
            }
            self.outboundOffset = 0
        } else if self.outboundOffset >= 64 * 1024 {
            // A stream that never drains completely (a Snapshot to a slow reader) must not
            // keep what it already sent.
            self.outbound.removeFirst(self.outboundOffset)
            self.outboundOffset = 0
        }
        return prefix + count
    }

    /// Copies up to `length` bytes of the pending prefix to `buffer`; how many.
    private func takePrefix(into buffer: UnsafeMutablePointer<UInt8>, length: Int) -> Int {
        guard let messageLength = self.outboundPrefixLength else { return 0 }
        var count = 0
        while count < length, self.outboundPrefixSent < GRPCWire.prefixLength {
            buffer[count] = GRPCWire.prefixByte(self.outboundPrefixSent, messageLength: messageLength)
            count += 1
            self.outboundPrefixSent += 1
        }
        if self.outboundPrefixSent == GRPCWire.prefixLength { self.outboundPrefixLength = nil }
        return count
    }

    /// Appends request bytes, compacting what was already consumed.
    func appendBody(_ bytes: UnsafeRawBufferPointer) {
        if self.bodyOffset > 0, self.bodyOffset == self.body.count {
            self.body.removeAll(keepingCapacity: true)
            self.bodyOffset = 0
        } else if self.bodyOffset > 64 * 1024 {
            self.body.removeFirst(self.bodyOffset)
            self.bodyOffset = 0
        }
        self.body.append(contentsOf: bytes)
    }

    var unreadBody: Int { self.body.count - self.bodyOffset }

    /// The length the next message's prefix declares (at least `GRPCWire.prefixLength` unread).
    var declaredLength: Int {
        let offset = self.bodyOffset
        return Int(self.body[offset + 1]) << 24 | Int(self.body[offset + 2]) << 16
            | Int(self.body[offset + 3]) << 8 | Int(self.body[offset + 4])
    }
}
