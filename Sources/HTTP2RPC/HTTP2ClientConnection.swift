import CNghttp2
import GRPCCore
import NIOCore
import NIOTLS
import Synchronization

/// What the client's callers may read of its connection from any thread.
final class ClientConnectionFlags: Sendable {
    /// The server sent GOAWAY (or the session can take no more streams): new calls need a new
    /// connection.
    let goingAway = Atomic(false)
}

/// One unary call of an `RPCClient`, from its request to its status. Touched on the
/// connection's event loop only.
final class ClientCall {
    /// The largest reply message a call takes, as grpc-swift's client: a server cannot make the
    /// client hold more.
    static let maxResponseBytes = 4 * 1024 * 1024

    /// The framed request, sent by the stream's data provider.
    let request: [UInt8]
    var requestOffset = 0
    var response: [UInt8] = []
    var httpStatus: String?
    var grpcStatus: String?
    var grpcMessage: String?
    var streamID: Int32 = 0
    /// The call's local deadline, cancelled once it ends.
    var deadline: Scheduled<Void>?
    private var completion: CheckedContinuation<[UInt8], any Error>?

    init(request: [UInt8], completion: CheckedContinuation<[UInt8], any Error>) {
        self.request = request
        self.completion = completion
    }

    /// Ends the call once; later outcomes (a reset after the status) are dropped.
    func complete(_ result: Result<[UInt8], RPCError>) {
        guard let completion = self.completion else { return }
        self.completion = nil
        self.deadline?.cancel()
        self.deadline = nil
        completion.resume(with: result.mapError { $0 as any Error })
    }

    /// The call's outcome from what the stream brought, once it has closed.
    func outcome(errorCode: UInt32) -> Result<[UInt8], RPCError> {
        guard let status = self.grpcStatus else {
            if errorCode == NGHTTP2_REFUSED_STREAM.rawValue {
                return .failure(RPCError(code: .unavailable, message: "the call was refused before it started (the connection is closing or full): retry"))
            }
            if errorCode != NGHTTP2_NO_ERROR.rawValue {
                return .failure(RPCError(code: .unavailable, message: "the server reset the call (HTTP/2 error \(errorCode)) before its status"))
            }
            return .failure(RPCError(code: Self.code(httpStatus: self.httpStatus),
                                     message: "the reply (HTTP status \(self.httpStatus ?? "none")) carried no grpc-status"))
        }
        guard let value = Int(status) else {
            return .failure(RPCError(code: .unknown, message: "malformed grpc-status '\(status)'"))
        }
        if value == 0 { return self.message() }
        let code = Status.Code(rawValue: value).flatMap { RPCError.Code($0) } ?? .unknown
        return .failure(RPCError(code: code, message: self.grpcMessage.map(GRPCWire.percentDecoded) ?? ""))
    }

    /// gRPC's mapping of an HTTP status that came without a grpc-status (a proxy's answer).
    private static func code(httpStatus: String?) -> RPCError.Code {
        switch httpStatus {
        case "400": .internalError
        case "401": .unauthenticated
        case "403": .permissionDenied
        case "404": .unimplemented
        case "429", "502", "503", "504": .unavailable
        default: .unknown
        }
    }

    /// The one reply message of a call whose status is OK.
    private func message() -> Result<[UInt8], RPCError> {
        guard self.response.count >= GRPCWire.prefixLength else {
            return .failure(RPCError(code: .internalError, message: "the server ended a unary call without a reply message"))
        }
        let length = Int(self.response[1]) << 24 | Int(self.response[2]) << 16 | Int(self.response[3]) << 8 | Int(self.response[4])
        guard self.response[0] == 0 else {
            return .failure(RPCError(code: .internalError, message: "the server sent a compressed reply, which this client did not ask for"))
        }
        guard length == self.response.count - GRPCWire.prefixLength else {
            return .failure(RPCError(code: .internalError, message: "the reply of a unary call was not exactly one message"))
        }
        return .success(Array(self.response[GRPCWire.prefixLength...]))
    }
}

/// The client side of one HTTP/2 connection: a libnghttp2 client session fed from, and draining
/// into, a NIO channel. Calls are streams of it; everything runs on the channel's event loop.
final class HTTP2ClientConnection: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = Never
    typealias OutboundIn = Never
    typealias OutboundOut = ByteBuffer

    private var session: OpaquePointer?
    private var context: ChannelHandlerContext?
    private var calls: [Int32: ClientCall] = [:]
    private var inCallbacks = false
    private var closed = false
    private var tlsReady: Bool
    /// Why calls fail once the connection is gone.
    private var closeReason = "the connection to the server closed"
    private let authority: String
    private let scheme: String
    /// Fulfilled by the server's first SETTINGS, failed if the connection ends before them: calls
    /// wait for it, so that a burst of them meets the server's stream limit queued by nghttp2
    /// instead of refused by the server.
    private var settingsReceived: EventLoopPromise<Void>?
    private var settingsTimer: Scheduled<Void>?
    /// The PING sent to learn whether the server is still there, and when it is given up on.
    private var probe: Scheduled<Void>?
    /// How long that PING may go unanswered before the connection is presumed dead.
    private let probeTimeout: TimeAmount
    let flags = ClientConnectionFlags()

    /// How long a new connection waits for the server's SETTINGS before giving up on it.
    static let settingsTimeout: TimeAmount = .seconds(10)

    init(authority: String, tls: Bool, probeTimeout: TimeAmount = .seconds(10)) {
        self.authority = authority
        self.probeTimeout = probeTimeout
        self.scheme = tls ? "https" : "http"
        self.tlsReady = !tls
    }

    static func with<Result>(_ userData: UnsafeMutableRawPointer, _ body: (HTTP2ClientConnection) -> Result) -> Result {
        Unmanaged<HTTP2ClientConnection>.fromOpaque(userData)._withUnsafeGuaranteedRef(body)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.settingsReceived = context.eventLoop.makePromise()
        var session: OpaquePointer?
        guard let callbacks = NGHTTP2Callbacks.client,
              nghttp2_session_client_new(&session, callbacks, Unmanaged.passUnretained(self).toOpaque()) == 0,
              let session else {
            self.closeReason = "libnghttp2 could not create a client session"
            context.close(promise: nil)
            return
        }
        self.session = session
        let settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 1 << 20),
        ]
        settings.withUnsafeBufferPointer { entries in
            _ = nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), entries.baseAddress, entries.count)
        }
        _ = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 8 << 20)
        self.flushOutput()
    }

    /// Succeeds once the server's first SETTINGS have arrived (at once if they have); fails with
    /// UNAVAILABLE if the connection ends first or they take longer than `settingsTimeout`.
    /// On the event loop only.
    func ready(on loop: any EventLoop) -> EventLoopFuture<Void> {
        guard let promise = self.settingsReceived else {
            // Either they came already, or the connection ended before them.
            return self.closed ? loop.makeFailedFuture(RPCError(code: .unavailable, message: self.closeReason)) : loop.makeSucceededVoidFuture()
        }
        if self.settingsTimer == nil {
            // The timer is cancelled by the SETTINGS or the teardown, so it holds the handler no longer.
            let connection = NIOLoopBound(self, eventLoop: loop)
            self.settingsTimer = loop.scheduleTask(in: Self.settingsTimeout) {
                let self_ = connection.value
                guard let context = self_.context, self_.settingsReceived != nil else { return }
                self_.closeReason = "the server sent no HTTP/2 SETTINGS within \(Self.settingsTimeout.nanoseconds / 1_000_000_000) s "
                    + "of connecting: is it a gRPC server\(self_.scheme == "http" ? " (it may want TLS)" : "")?"
                context.close(promise: nil)
            }
        }
        return promise.futureResult
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.teardown()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.teardown()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        guard let session = self.session else { return }
        self.inCallbacks = true
        let result = buffer.withUnsafeReadableBytes { bytes in
            nghttp2_session_mem_recv(session, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
        }
        self.inCallbacks = false
        if result < 0 {
            self.closeReason = "the server broke the HTTP/2 protocol: \(String(cString: nghttp2_strerror(Int32(truncatingIfNeeded: result))))"
            self.flushOutput()
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.flushOutput()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.flushOutput() }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event {
            guard negotiated == "h2" else {
                self.closeReason = "the server did not agree to HTTP/2 over TLS (ALPN: \(negotiated ?? "none"))"
                context.close(promise: nil)
                return
            }
            self.tlsReady = true
            self.flushOutput()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.closeReason = "the connection to the server failed: \(error)"
        context.close(promise: nil)
    }

    // MARK: Calls

    /// Starts a unary call of `path` with the framed `request`.
    func start(_ call: ClientCall, path: String, metadata: [(name: String, value: String)]) {
        guard let session = self.session, !self.closed else {
            call.complete(.failure(RPCError(code: .unavailable, message: self.closeReason)))
            return
        }
        var headers: [(name: String, value: String)] = [
            (":method", "POST"), (":scheme", self.scheme), (":path", path), (":authority", self.authority),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ]
        headers += metadata
        var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: NGHTTP2Callbacks.readRequest)
        let id = NGHTTP2Headers.with(headers) { nva, count in
            nghttp2_submit_request(session, nil, nva, count, &provider, nil)
        }
        guard id > 0 else {
            // Out of stream ids (2^30 calls on one connection): the next call needs a new one.
            if id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE.rawValue {
                self.flags.goingAway.store(true, ordering: .relaxed)
                _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, NGHTTP2_NO_ERROR.rawValue, nil, 0)
                self.flushOutput()
            }
            call.complete(.failure(RPCError(code: .unavailable, message: "could not start the call: \(String(cString: nghttp2_strerror(id)))")))
            return
        }
        // The last ids: calls after this one go to a new connection before they run out, and
        // this one says GOAWAY itself, so it closes once its calls are done (nghttp2 then
        // wants neither to read nor to write) instead of lingering unreachable.
        if id >= Int32.max - 2 * 1024, !self.flags.goingAway.load(ordering: .relaxed) {
            self.flags.goingAway.store(true, ordering: .relaxed)
            _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, NGHTTP2_NO_ERROR.rawValue, nil, 0)
        }
        call.streamID = id
        self.calls[id] = call
        self.flushOutput()
    }

    /// Cancels a call its caller gave up on: RST_STREAM(CANCEL) to the server.
    func cancel(_ call: ClientCall) {
        self.end(call, RPCError(code: .cancelled, message: "the call was cancelled"))
    }

    /// Ends a call whose local deadline passed before its status came; the server is told with
    /// RST_STREAM(CANCEL), as gRPC clients do. A call that overran may mean a connection whose
    /// peer is gone without a word (a host down, a dropped route): TCP would take many minutes to
    /// tell, and every later call would overrun on it too. So the server is sent a PING, and the
    /// connection is closed if no answer comes within `probeTimeout`; the next call connects anew.
    func expire(_ call: ClientCall, after timeout: Duration) {
        self.end(call, RPCError(code: .deadlineExceeded, message: "the call did not finish within its deadline of \(timeout)"))
        self.sendProbe()
    }

    private func sendProbe() {
        guard self.probe == nil, let session = self.session, let context = self.context, !self.closed else { return }
        guard nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil) == 0 else { return }
        let connection = NIOLoopBound(self, eventLoop: context.eventLoop)
        let timeout = self.probeTimeout
        self.probe = context.eventLoop.scheduleTask(in: timeout) {
            let self_ = connection.value
            self_.probe = nil
            guard let context = self_.context, !self_.closed else { return }
            self_.closeReason = "the server answered no PING within \(timeout.nanoseconds / 1_000_000) ms after a call overran "
                + "its deadline: the connection was presumed dead and closed"
            self_.flags.goingAway.store(true, ordering: .relaxed)
            context.close(promise: nil)
        }
        self.flushOutput()
    }

    private func end(_ call: ClientCall, _ error: RPCError) {
        call.complete(.failure(error))
        guard let session = self.session, call.streamID > 0, self.calls[call.streamID] != nil else { return }
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), call.streamID, NGHTTP2_CANCEL.rawValue)
        // A call still queued behind the server's stream limit has no stream yet: the reset marks
        // its HEADERS cancelled, but nghttp2 drops them (and says the stream closed) only when a
        // slot frees, which may be never; the call is forgotten now.
        if nghttp2_session_find_stream(session, call.streamID) == nil { self.calls.removeValue(forKey: call.streamID) }
        self.flushOutput()
    }

    // MARK: nghttp2 callbacks

    func onHeader(_ frame: UnsafePointer<nghttp2_frame>, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Int32 {
        guard frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue), let call = self.calls[frame.pointee.hd.stream_id] else { return 0 }
        let name = String(decoding: name, as: UTF8.self)
        switch name {
        case ":status": call.httpStatus = String(decoding: value, as: UTF8.self)
        case "grpc-status": call.grpcStatus = String(decoding: value, as: UTF8.self)
        case "grpc-message": call.grpcMessage = String(decoding: value, as: UTF8.self)
        default: break
        }
        return 0
    }

    func onData(_ streamID: Int32, _ data: UnsafeRawBufferPointer) -> Int32 {
        guard let call = self.calls[streamID] else { return 0 }
        guard call.response.count + data.count <= ClientCall.maxResponseBytes + GRPCWire.prefixLength else {
            call.complete(.failure(RPCError(code: .resourceExhausted,
                                            message: "the reply is larger than this client's limit of \(ClientCall.maxResponseBytes) bytes")))
            // Resets the stream; on_stream_close forgets the call.
            return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        call.response.append(contentsOf: data)
        return 0
    }

    func onFrameReceived(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        if frame.pointee.hd.type == UInt8(NGHTTP2_GOAWAY.rawValue) { self.flags.goingAway.store(true, ordering: .relaxed) }
        if frame.pointee.hd.type == UInt8(NGHTTP2_PING.rawValue), frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0 {
            self.probe?.cancel()
            self.probe = nil
        }
        if frame.pointee.hd.type == UInt8(NGHTTP2_SETTINGS.rawValue), let promise = self.settingsReceived {
            self.settingsReceived = nil
            self.settingsTimer?.cancel()
            self.settingsTimer = nil
            promise.succeed()
        }
        return 0
    }

    func onStreamClosed(_ streamID: Int32, errorCode: UInt32) -> Int32 {
        guard let call = self.calls.removeValue(forKey: streamID) else { return 0 }
        call.complete(call.outcome(errorCode: errorCode))
        return 0
    }

    func readRequest(_ streamID: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int, flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let call = self.calls[streamID] else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        let count = min(length, call.request.count - call.requestOffset)
        call.request.withUnsafeBytes { bytes in
            UnsafeMutableRawBufferPointer(start: buffer, count: count)
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[call.requestOffset..<call.requestOffset + count]))
        }
        call.requestOffset += count
        if call.requestOffset == call.request.count { flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue }
        return count
    }

    // MARK: Output

    private func flushOutput() {
        guard let session = self.session, let context = self.context, !self.inCallbacks, self.tlsReady else { return }
        var buffer = context.channel.allocator.buffer(capacity: 16 * 1024)
        while context.channel.isWritable {
            var data: UnsafePointer<UInt8>?
            self.inCallbacks = true
            let count = nghttp2_session_mem_send(session, &data)
            self.inCallbacks = false
            guard count >= 0 else {
                self.closeReason = "libnghttp2 failed to produce output: \(String(cString: nghttp2_strerror(Int32(truncatingIfNeeded: count))))"
                context.close(promise: nil)
                return
            }
            guard count > 0, let data else { break }
            buffer.writeBytes(UnsafeRawBufferPointer(start: data, count: count))
        }
        if buffer.readableBytes > 0 { context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil) }
        // After a GOAWAY the session ends once its last stream has: close, so a new call reconnects.
        if let session = self.session, nghttp2_session_want_read(session) == 0, nghttp2_session_want_write(session) == 0 {
            self.flags.goingAway.store(true, ordering: .relaxed)
            context.close(promise: nil)
        }
    }

    private func teardown() {
        guard !self.closed else { return }
        self.closed = true
        self.settingsTimer?.cancel()
        self.settingsTimer = nil
        self.probe?.cancel()
        self.probe = nil
        if let promise = self.settingsReceived {
            self.settingsReceived = nil
            promise.fail(RPCError(code: .unavailable, message: self.closeReason))
        }
        let calls = self.calls.values
        self.calls.removeAll()
        if let session = self.session {
            self.session = nil
            nghttp2_session_del(session)
        }
        for call in calls { call.complete(.failure(RPCError(code: .unavailable, message: self.closeReason))) }
    }
}
