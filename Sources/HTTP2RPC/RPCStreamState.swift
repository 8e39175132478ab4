import GRPCCore
import NIOCore

/// One HTTP/2 stream of a connection: an entry in its connection's table, touched on the
/// connection's event loop only.
final class RPCStreamState {
    enum Kind {
        /// Headers not complete yet.
        case pending
        /// Answered on the loop once the request has arrived.
        case immediate(ImmediateRoutes.Handler)
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
    /// The handler answering on the loop, known as soon as `:path` is.
    var immediate: ImmediateRoutes.Handler?
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
    var trailers: Trailers?
    /// The status is queued (or sent); later writes are refused.
    var finished = false
    /// The data provider returned DEFERRED and waits for `nghttp2_session_resume_data`.
    var deferred = false

    // Bridged streams only.
    var inbound: AsyncThrowingStream<RPCRequestPart<[UInt8]>, any Error>.Continuation?
    var cancellation: ServerContext.RPCCancellationHandle?
    var cancelled = false
    var waitingWriters: [CheckedContinuation<Void, any Error>] = []
    var deadline: Scheduled<Void>?

    init(id: Int32) {
        self.id = id
    }

    var pendingOutboundBytes: Int { self.outbound.count - self.outboundOffset }

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
}
