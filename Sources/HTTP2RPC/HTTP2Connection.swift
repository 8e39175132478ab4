import CNghttp2
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import GRPCCore
import Logging
import NIOCore
import NIOTLS
import NIOSSL

/// One client connection: a libnghttp2 server session fed from, and draining into, a NIO
/// channel. Everything here runs on the channel's event loop; streams are entries in
/// `streams`, so a call costs no channel, task or pipeline of its own.
final class HTTP2Connection: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = Never
    typealias OutboundIn = Never
    typealias OutboundOut = ByteBuffer

    struct Shared: Sendable {
        let configuration: RPCServerConfiguration
        let routes: RPCRoutes
        let methods: [String: MethodDescriptor]
        /// The calls running as tasks, which the server waits for when it stops.
        let running: RunningCalls
        let logger: Logger
        /// Hands a stream to the grpc-swift services; false once the server no longer takes calls.
        let deliver: @Sendable (IncomingRPC) -> Bool
    }

    private let shared: Shared
    private var session: OpaquePointer?
    private var context: ChannelHandlerContext?
    /// The open streams, as a list through the states themselves: a stream costs no table entry
    /// or hash, and is found by id through the pointer nghttp2 keeps for it.
    private var streams = RPCStreamState.List()
    private var inCallbacks = false
    /// Replies of finished tasks wait for one flush the loop runs after them: a group commit
    /// ends many calls at once, and a socket write each was a tenth of the producer's CPU.
    private var deferringFlush = false
    private var flushScheduled = false
    private var closing = false
    private var quiescing = false
    private var quiesceStartedAt: NIODeadline?
    private var goawaySent = false
    // Times the once-a-second tick needs, to that precision: reads and stream closes only set
    // a flag, as reading the clock for each was a measurable part of a call.
    private var lastRead = NIODeadline.now()
    private var lastStreamActivity = NIODeadline.now()
    private var readSinceTick = false
    private var streamClosedSinceTick = false
    private var pingSentAt: NIODeadline?
    private var ticker: RepeatedTask?
    /// Request bytes held across this connection's streams, bounded by `maxConnectionBufferBytes`.
    private var bufferedRequestBytes = 0
    private let readScope = ImmediateReadScope()
    private var output: ByteBuffer?
    private var remotePeer = "unknown"
    private var localPeer = "unknown"
    private let tlsRequired: Bool
    private var tlsReady: Bool

    init(shared: Shared) {
        self.shared = shared
        self.tlsRequired = shared.configuration.tls != nil
        self.tlsReady = shared.configuration.tls == nil
    }

    /// Calls `body` with the connection nghttp2 hands back as user data, without retaining it:
    /// the connection owns the session, so it outlives every callback (no retain and release
    /// for each header and frame).
    static func with<Result>(_ userData: UnsafeMutableRawPointer, _ body: (HTTP2Connection) -> Result) -> Result {
        Unmanaged<HTTP2Connection>.fromOpaque(userData)._withUnsafeGuaranteedRef(body)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.remotePeer = context.channel.remoteAddress.map { "\($0)" } ?? "unknown"
        self.localPeer = context.channel.localAddress.map { "\($0)" } ?? "unknown"
        guard let callbacks = NGHTTP2Callbacks.server else {
            self.shared.logger.error("libnghttp2 could not allocate its callbacks; closing the connection")
            context.close(promise: nil)
            return
        }
        var option: OpaquePointer?
        nghttp2_option_new(&option)
        if let option {
            nghttp2_option_set_stream_reset_rate_limit(option, self.shared.configuration.resetBurst,
                                                       self.shared.configuration.resetsPerSecond)
            nghttp2_option_set_max_continuations(option, 8)
            nghttp2_option_set_max_outbound_ack(option, 1000)
            nghttp2_option_set_max_settings(option, 32)
            // Metadata values with surrounding spaces ("Bearer ") reach the services, which
            // answer them with a status rather than a reset stream.
            nghttp2_option_set_no_rfc9113_leading_and_trailing_ws_validation(option, 1)
        }
        var session: OpaquePointer?
        let result = nghttp2_session_server_new2(&session, callbacks, Unmanaged.passUnretained(self).toOpaque(), option)
        if let option { nghttp2_option_del(option) }
        guard result == 0, let session else {
            self.shared.logger.error("libnghttp2 could not create a session; closing the connection",
                                     metadata: ["error": "\(result)"])
            context.close(promise: nil)
            return
        }
        self.session = session
        let settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
                                   value: UInt32(clamping: self.shared.configuration.maxConcurrentStreams)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue),
                                   value: UInt32(clamping: self.shared.configuration.maxHeaderListBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 1 << 20),
        ]
        settings.withUnsafeBufferPointer { entries in
            _ = nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), entries.baseAddress, entries.count)
        }
        // A larger connection window than the 64 KiB default, so that many streams' requests
        // are not held back by connection-level flow control.
        _ = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 8 << 20)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.ticker = context.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            loopBound.value.tick()
        }
        if self.tlsReady { self.flushOutput() }
    }

    deinit {
        // Normally empty by now (teardown); unlinked one by one, a long list is not released
        // by a recursion as deep as the list.
        _ = self.streams.removeAll()
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
        guard let session = self.session, !self.closing else { return }
        self.readSinceTick = true
        self.pingSentAt = nil
        self.inCallbacks = true
        let result = buffer.withUnsafeReadableBytes { bytes in
            nghttp2_session_mem_recv(session, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
        }
        self.inCallbacks = false
        // The calls answered from this read are done; what they shared (a read transaction)
        // must not outlive it, or a later request could see an older snapshot than its caller has.
        self.readScope.end()
        if result < 0 {
            self.shared.logger.debug("closing a connection that broke the HTTP/2 protocol", metadata: [
                "peer": "\(self.remotePeer)", "error": "\(String(cString: nghttp2_strerror(Int32(truncatingIfNeeded: result))))",
            ])
            // nghttp2 queued a GOAWAY saying why; send it before closing.
            self.flushOutput()
            self.close()
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
            guard negotiated == nil || negotiated == "h2" else {
                self.shared.logger.debug("closing a TLS connection that did not negotiate h2",
                                         metadata: ["peer": "\(self.remotePeer)", "alpn": "\(negotiated ?? "")"])
                self.close()
                return
            }
            self.tlsReady = true
            self.flushOutput()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.shared.logger.debug("connection error", metadata: ["peer": "\(self.remotePeer)", "error": "\(error)"])
        self.close()
    }

    // MARK: Output

    /// Moves what nghttp2 has to send into the channel, while the channel takes it.
    func flushOutput() {
        guard let session = self.session, let context = self.context, !self.inCallbacks, self.tlsReady else { return }
        // The last flush's buffer, written out by now in the usual case, so its storage is
        // ours alone again and clear() reuses it: no allocation per flush.
        var buffer = self.output ?? context.channel.allocator.buffer(capacity: 16 * 1024)
        self.output = nil
        buffer.clear()
        var wrote = false
        while context.channel.isWritable {
            var data: UnsafePointer<UInt8>?
            self.inCallbacks = true
            let count = nghttp2_session_mem_send(session, &data)
            self.inCallbacks = false
            if count < 0 {
                self.shared.logger.debug("libnghttp2 failed to produce output; closing the connection",
                                         metadata: ["error": "\(count)"])
                self.close()
                return
            }
            guard count > 0, let data else { break }
            buffer.writeBytes(UnsafeRawBufferPointer(start: data, count: count))
            if buffer.readableBytes >= 64 * 1024 {
                context.write(self.wrapOutboundOut(buffer), promise: nil)
                buffer = context.channel.allocator.buffer(capacity: 16 * 1024)
                wrote = true
            }
        }
        if buffer.readableBytes > 0 {
            context.write(self.wrapOutboundOut(buffer), promise: nil)
            wrote = true
        }
        if buffer.capacity <= 64 * 1024 { self.output = buffer }
        if wrote { context.flush() }
        // A failed write closes the channel inside flush(), and teardown deletes the session.
        guard let session = self.session else { return }
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            self.close()
        }
    }

    private func close() {
        guard !self.closing else { return }
        self.closing = true
        self.context?.close(promise: nil)
    }

    private func teardown() {
        self.readScope.end()
        self.ticker?.cancel()
        self.ticker = nil
        let streams = self.streams.removeAll()
        // The session goes first: a stream is found by id through it, and none may be found now.
        if let session = self.session {
            self.session = nil
            nghttp2_session_del(session)
        }
        for state in streams { self.abandon(state, reason: "the connection closed") }
    }

    // MARK: Timers, keepalive, shutdown

    private func tick() {
        guard let session = self.session, !self.closing else { return }
        let now = NIODeadline.now()
        let configuration = self.shared.configuration
        if self.readSinceTick {
            self.readSinceTick = false
            self.lastRead = now
        } else {
            // A connection with nothing to do holds no output buffer: many idle clients must
            // not pin 16 KiB each.
            self.output = nil
        }
        if self.streamClosedSinceTick {
            self.streamClosedSinceTick = false
            self.lastStreamActivity = now
        }
        // Before the keepalive's early return, and timed from the notice, not from the last
        // stream's end: a peer that never answers PINGs and keeps closing streams must not
        // hold a graceful shutdown open.
        if self.quiescing, !self.goawaySent, let started = self.quiesceStartedAt, now - started > .seconds(1) {
            self.sendGoaway()
            self.flushOutput()
        }
        if let sent = self.pingSentAt {
            if now - sent > TimeAmount(configuration.keepaliveTimeout) {
                self.shared.logger.debug("closing a connection whose peer did not answer a keepalive PING",
                                         metadata: ["peer": "\(self.remotePeer)"])
                self.close()
            }
            return
        }
        if self.streams.isEmpty, now - self.lastStreamActivity > TimeAmount(configuration.idleTimeout) {
            self.shared.logger.debug("closing an idle connection", metadata: ["peer": "\(self.remotePeer)"])
            self.sendGoaway()
            self.flushOutput()
            self.close()
            return
        }
        if now - self.lastRead > TimeAmount(configuration.keepaliveInterval) {
            self.pingSentAt = now
            _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
            self.flushOutput()
        }
    }

    /// Graceful shutdown: a shutdown notice now, the final GOAWAY once the peer has answered a
    /// PING (or after a second), then the connection closes when its last call is done.
    func quiesce() {
        guard let session = self.session, !self.quiescing else { return }
        self.quiescing = true
        // A TLS connection still in its handshake carries no call, and nothing can be sent on
        // it until the handshake ends (which a stalled peer may never finish).
        guard self.tlsReady else {
            self.close()
            return
        }
        self.quiesceStartedAt = .now()
        self.lastStreamActivity = .now()
        self.streamClosedSinceTick = false
        _ = nghttp2_submit_shutdown_notice(session)
        _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
        self.flushOutput()
    }

    func forceClose() {
        self.close()
    }

    private func sendGoaway() {
        guard let session = self.session, !self.goawaySent else { return }
        self.goawaySent = true
        _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session),
                                  NGHTTP2_NO_ERROR.rawValue, nil, 0)
    }

    // MARK: nghttp2 callbacks (inside mem_recv / mem_send)

    func onBeginHeaders(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let header = frame.pointee.hd
        guard header.type == UInt8(NGHTTP2_HEADERS.rawValue),
              frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST else { return 0 }
        let state = RPCStreamState(id: header.stream_id)
        self.streams.insert(state)
        // The list holds the state; nghttp2 keeps a pointer to it for the hot lookups (each
        // header, data chunk and read), and forgets it when the stream closes.
        if let session = self.session {
            nghttp2_session_set_stream_user_data(session, header.stream_id, Unmanaged.passUnretained(state).toOpaque())
        }
        return 0
    }

    /// The stream's state, through the pointer nghttp2 keeps for it.
    private func stream(_ id: Int32) -> RPCStreamState? {
        guard let session = self.session, let pointer = nghttp2_session_get_stream_user_data(session, id) else { return nil }
        return Unmanaged<RPCStreamState>.fromOpaque(pointer).takeUnretainedValue()
    }

    /// Calls `body` with stream `id`'s state without retaining it (the table holds it while
    /// nghttp2 knows the stream); 0 if there is no such stream.
    private func withStream(_ id: Int32, _ body: (RPCStreamState) -> Int32) -> Int32 {
        guard let session = self.session, let pointer = nghttp2_session_get_stream_user_data(session, id) else { return 0 }
        return Unmanaged<RPCStreamState>.fromOpaque(pointer)._withUnsafeGuaranteedRef(body)
    }

    func onHeader(_ frame: UnsafePointer<nghttp2_frame>, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Int32 {
        self.withStream(frame.pointee.hd.stream_id) { state in self.onHeader(state, name: name, value: value) }
    }

    private func onHeader(_ state: RPCStreamState, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Int32 {
        // Request trailers carry nothing gRPC uses.
        guard case .pending = state.kind else { return 0 }
        state.headerBytes += name.count + value.count + 32
        if state.headerBytes > self.shared.configuration.maxHeaderListBytes {
            // Resets the stream; nghttp2 calls on_stream_close, which forgets it.
            return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        // Pseudo-headers come first (nghttp2 enforces it), so the route is known before the
        // metadata; calls answered on the loop keep none of it, and no String is made for it.
        if name.first == UInt8(ascii: ":") {
            if Self.equals(name, ":path") {
                if let route = self.shared.routes.route(for: value) {
                    state.path = route.path
                    state.route = route.handler
                } else {
                    state.path = String(decoding: value, as: UTF8.self)
                }
            } else if Self.equals(name, ":method") {
                state.isPost = Self.equals(value, "POST")
                if !state.isPost { state.method = String(decoding: value, as: UTF8.self) }
            }
            return 0
        }
        if Self.equals(name, "content-type") {
            state.contentTypeIsGRPC = Self.isGRPCContentType(value)
            if !state.contentTypeIsGRPC { state.contentType = String(decoding: value, as: UTF8.self) }
        } else if Self.equals(name, "grpc-encoding") {
            if !Self.equals(value, "identity") { state.encoding = String(decoding: value, as: UTF8.self) }
        } else if Self.equals(name, "grpc-timeout") {
            state.timeout = String(decoding: value, as: UTF8.self)
        }
        if !state.isImmediate {
            state.headers.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        return 0
    }

    func onFrameReceived(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let header = frame.pointee.hd
        let endStream = header.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        switch header.type {
        case UInt8(NGHTTP2_HEADERS.rawValue):
            guard let state = self.stream(header.stream_id) else { return 0 }
            if case .pending = state.kind { self.headersComplete(state) }
            if endStream { self.requestEnded(state) }
        case UInt8(NGHTTP2_DATA.rawValue):
            guard endStream, let state = self.stream(header.stream_id) else { return 0 }
            self.requestEnded(state)
        case UInt8(NGHTTP2_PING.rawValue):
            if header.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0, self.quiescing { self.sendGoaway() }
        default:
            break
        }
        return 0
    }

    func onData(_ streamID: Int32, _ data: UnsafeRawBufferPointer) -> Int32 {
        self.withStream(streamID) { state in self.onData(state, data) }
    }

    private func onData(_ state: RPCStreamState, _ data: UnsafeRawBufferPointer) -> Int32 {
        switch state.kind {
        case .rejected, .pending, .running:
            return 0
        case .immediate, .task:
            if state.unreadBody + data.count > self.shared.configuration.maxRequestBytes + GRPCWire.prefixLength {
                self.reject(state, tooLarge: state.unreadBody + data.count - GRPCWire.prefixLength)
                return 0
            }
            guard self.reserveRequestBytes(state, data.count) else { return 0 }
            state.appendBody(data)
            // Refused as soon as the length prefix says the message is too large, not once
            // that many bytes came (a client that never sends them would hold the stream).
            if state.unreadBody >= GRPCWire.prefixLength {
                let length = state.declaredLength
                if length > self.shared.configuration.maxRequestBytes { self.reject(state, tooLarge: length) }
            }
        case .bridged:
            guard self.reserveRequestBytes(state, data.count) else { return 0 }
            state.appendBody(data)
            self.deliverMessages(state)
        }
        return 0
    }

    /// Counts `count` more request bytes held for `state`; false (and the call refused) when the
    /// connection already holds as much as it may: many streams each sending most of a large
    /// message must not add up to unbounded memory.
    private func reserveRequestBytes(_ state: RPCStreamState, _ count: Int) -> Bool {
        guard self.bufferedRequestBytes + count <= self.shared.configuration.maxConnectionBufferBytes else {
            self.refuse(state, code: .resourceExhausted,
                        message: "this connection has \(self.bufferedRequestBytes) bytes of unfinished requests, the server's "
                            + "limit per connection: send large requests one at a time, or spread them over connections")
            self.releaseRequestBytes(state)
            return false
        }
        self.bufferedRequestBytes += count
        state.heldRequestBytes += count
        return true
    }

    private func releaseRequestBytes(_ state: RPCStreamState) {
        self.bufferedRequestBytes -= state.heldRequestBytes
        state.heldRequestBytes = 0
    }

    func onStreamClosed(_ streamID: Int32, errorCode: UInt32) -> Int32 {
        guard let state = self.stream(streamID), state.isListed else { return 0 }
        self.streams.remove(state)
        self.releaseRequestBytes(state)
        self.streamClosedSinceTick = true
        if !state.finished || errorCode != NGHTTP2_NO_ERROR.rawValue {
            self.abandon(state, reason: "the client cancelled the call")
        } else {
            self.settle(state)
        }
        return 0
    }

    func readResponse(_ streamID: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int,
                      flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let state = self.stream(streamID) else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        let count = state.takeOutbound(into: buffer, length: length)
        if count > 0 { self.releaseWriters(state) }
        if state.pendingOutboundBytes == 0 {
            if let trailers = state.trailers {
                flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue | NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                if let session = self.session {
                    let submitted: Int32
                    switch trailers {
                    case .ok: submitted = nghttp2_submit_trailer(session, streamID, StaticHeaders.okTrailers.pairs, StaticHeaders.okTrailers.count)
                    case .custom(let trailers):
                        submitted = NGHTTP2Headers.with(trailers) { nva, count in nghttp2_submit_trailer(session, streamID, nva, count) }
                    }
                    if submitted != 0 {
                        // Without trailers the stream would stay open until the client gave up:
                        // end the data with the stream instead (the client sees the status missing).
                        self.shared.logger.debug("could not submit trailers", metadata: ["stream": "\(streamID)", "error": "\(submitted)"])
                        flags.pointee &= ~NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                    }
                }
                state.trailers = nil
            } else if count == 0 {
                state.deferred = true
                return Int(NGHTTP2_ERR_DEFERRED.rawValue)
            }
        }
        return count
    }

    // MARK: Requests

    private func headersComplete(_ state: RPCStreamState) {
        guard state.isPost else {
            self.respondHTTPError(state, status: "405", grpcStatus: .unimplemented,
                                  message: "gRPC calls use POST, not \(state.method)")
            return
        }
        guard state.contentTypeIsGRPC else {
            self.respondHTTPError(state, status: "415", grpcStatus: .unknown,
                                  message: "content-type '\(state.contentType ?? "")' is not gRPC: send application/grpc")
            return
        }
        if !state.isImmediate, let admission = self.shared.routes.admission,
           let refusal = admission(RPCCallInfo(path: state.path, metadata: state.headers)) {
            self.respondStatus(state, code: Status.Code(refusal.code), message: refusal.message)
            return
        }
        if let encoding = state.encoding {
            self.respondStatus(state, code: .unimplemented,
                               message: "grpc-encoding '\(encoding)' is not supported: send messages uncompressed",
                               extra: [("grpc-accept-encoding", "identity")])
            return
        }
        switch state.route {
        case .immediate(let handler)?:
            state.kind = .immediate(handler)
        case .task(let handler)?:
            state.kind = .task(handler)
            // The deadline runs from the headers: a slow request body counts against it.
            self.startDeadline(state)
        case nil:
            self.startBridged(state)
        }
    }

    private func requestEnded(_ state: RPCStreamState) {
        guard !state.requestEnded else { return }
        state.requestEnded = true
        switch state.kind {
        case .immediate(let handler):
            self.answerImmediately(state, handler)
        case .task(let handler):
            self.startTask(state, handler)
        case .bridged:
            if state.unreadBody > 0 {
                self.failBridged(state, code: .internalError,
                                 message: "the request ended inside a message: \(state.unreadBody) bytes of a message prefix or body left over")
                return
            }
            state.inbound?.finish()
        case .pending, .rejected, .running:
            break
        }
    }

    private func answerImmediately(_ state: RPCStreamState, _ handler: RPCRoutes.ImmediateHandler) {
        let call = ImmediateCall(path: state.path, scope: self.readScope)
        self.answer(state, self.withUnaryRequest(state, { handler($0, call) }))
    }

    /// Ends a unary call with its one reply message, or with its error's status.
    private func answer(_ state: RPCStreamState, _ outcome: Result<[UInt8], RPCError>) {
        switch outcome {
        case .success(let message):
            state.setUnaryReply(message)
            state.trailers = .ok
            state.finished = true
            self.submitResponse(state)
        case .failure(let error):
            self.respondStatus(state, code: Status.Code(error.code), message: error.message)
        }
    }

    /// Runs the call's job as a task, whose outcome comes back to `taskFinished`.
    private func startTask(_ state: RPCStreamState, _ handler: RPCRoutes.TaskHandler) {
        guard !state.finished else { return }
        let call = RPCCallInfo(path: state.path, metadata: state.headers)
        state.headers = []
        let job: RPCRoutes.Job
        switch self.withUnaryRequest(state, { .success(handler($0, call)) }) {
        case .success(let made):
            job = made
        case .failure(let error):
            self.failTask(state, code: Status.Code(error.code), message: error.message)
            return
        }
        guard let context = self.context, self.shared.running.enter() else {
            self.failTask(state, code: .unavailable, message: "the server is shutting down: call another instance or retry")
            return
        }
        state.kind = .running
        let connection = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        let id = state.id
        let running = self.shared.running
        state.task = Task {
            let outcome = await job()
            // Handed to the loop before the call stops counting: the server's loops outlive
            // the counted calls.
            loop.execute { connection.value.taskFinished(id, outcome) }
            running.leave()
        }
    }

    /// A call's task has ended; its reply or status goes out unless the call ended first.
    private func taskFinished(_ streamID: Int32, _ outcome: Result<[UInt8], RPCError>) {
        guard let state = self.stream(streamID), case .running = state.kind, !state.finished else { return }
        state.task = nil
        state.deadline?.cancel()
        state.deadline = nil
        self.deferringFlush = true
        self.answer(state, outcome)
        self.deferringFlush = false
        self.scheduleFlush()
    }

    /// Flushes once the loop has run what is queued now (other tasks' replies among it).
    private func scheduleFlush() {
        guard !self.flushScheduled, let context = self.context else { return }
        self.flushScheduled = true
        let connection = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.execute {
            connection.value.flushScheduled = false
            connection.value.flushOutput()
        }
    }

    private func failTask(_ state: RPCStreamState, code: Status.Code, message: String) {
        self.respondStatus(state, code: code, message: message)
        state.kind = .rejected
        self.cancelHandler(state)
    }

    /// Calls `body` with the one request message of a unary call whose request has ended, and
    /// frees the request's bytes; a missing, compressed or extra message is the call's error.
    private func withUnaryRequest<Value>(_ state: RPCStreamState,
                                         _ body: (UnsafeRawBufferPointer) -> Result<Value, RPCError>) -> Result<Value, RPCError> {
        defer {
            state.body = []
            state.bodyOffset = 0
            self.releaseRequestBytes(state)
        }
        let available = state.unreadBody
        guard available >= GRPCWire.prefixLength else {
            return .failure(RPCError(code: available == 0 ? .unimplemented : .internalError,
                                     message: available == 0 ? "the call sent no request message: a unary call sends exactly one"
                                                             : "the request ended inside a message prefix"))
        }
        return state.body.withUnsafeBytes { all in
            let bytes = UnsafeRawBufferPointer(rebasing: all[state.bodyOffset...])
            let length = Int(bytes[1]) << 24 | Int(bytes[2]) << 16 | Int(bytes[3]) << 8 | Int(bytes[4])
            guard bytes[0] == 0 else {
                return .failure(RPCError(code: .unimplemented, message: "the request message is compressed, which this server does not support: send it uncompressed"))
            }
            guard length == bytes.count - GRPCWire.prefixLength else {
                return .failure(RPCError(code: length < bytes.count - GRPCWire.prefixLength ? .unimplemented : .internalError,
                                         message: length < bytes.count - GRPCWire.prefixLength
                                             ? "a unary call sends exactly one request message; this one sent more"
                                             : "the request ended inside a message"))
            }
            return body(UnsafeRawBufferPointer(rebasing: bytes[GRPCWire.prefixLength...]))
        }
    }

    private func reject(_ state: RPCStreamState, tooLarge size: Int) {
        self.refuse(state, code: .resourceExhausted,
                    message: "the request message is \(size) bytes, more than this server's limit of "
                        + "\(self.shared.configuration.maxRequestBytes) bytes: send smaller requests")
    }

    /// Ends a call the server will not take further: a handed-over one is also cancelled. What
    /// its request held is released at once: the rest of it is dropped as it comes.
    private func refuse(_ state: RPCStreamState, code: Status.Code, message: String) {
        switch state.kind {
        case .bridged:
            self.failBridged(state, code: code, message: message)
        case .task, .running:
            self.failTask(state, code: code, message: message)
        default:
            self.respondStatus(state, code: code, message: message)
        }
        state.body = []
        state.bodyOffset = 0
        self.releaseRequestBytes(state)
    }

    /// A call answered while its client keeps its request open would hold a stream slot (and keep
    /// the connection from ever being idle) until the client ends it: after a grace period that
    /// lets the status arrive on its own (grpcio reads a RST_STREAM arriving with it as
    /// INTERNAL, losing the status), RST_STREAM(NO_ERROR) asks it to stop (RFC 9113 §8.1).
    private func resetIfStillSending(_ state: RPCStreamState) {
        guard !state.requestEnded, let context = self.context else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let id = state.id
        context.eventLoop.scheduleTask(in: Self.refusedRequestGrace) {
            let connection = loopBound.value
            guard let state = connection.stream(id), state.isListed, !state.requestEnded,
                  let session = connection.session else { return }
            // The status must be out first: a reset drops trailers still queued behind a
            // flow-control window the client has not opened. Look again later.
            guard nghttp2_session_get_stream_local_close(session, id) == 1 else {
                connection.resetIfStillSending(state)
                return
            }
            _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_NO_ERROR.rawValue)
            connection.flushOutput()
        }
    }

    /// How long a refused call's client may go on sending before its stream is reset.
    static let refusedRequestGrace = TimeAmount.seconds(2)

    // MARK: Responses

    private static let responseHeaders: [(name: String, value: String)] = [(":status", "200"), ("content-type", "application/grpc")]

    /// Submits the response headers (`:status 200` and the content type, plus `metadata`) with a
    /// data provider reading `state.outbound`.
    private func submitResponse(_ state: RPCStreamState, metadata: [(name: String, value: String)] = []) {
        guard let session = self.session, !state.responseStarted else {
            self.resume(state)
            return
        }
        state.responseStarted = true
        var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: NGHTTP2Callbacks.read)
        let result = metadata.isEmpty
            ? nghttp2_submit_response(session, state.id, StaticHeaders.response.pairs, StaticHeaders.response.count, &provider)
            : NGHTTP2Headers.with(Self.responseHeaders + metadata) { nva, count in nghttp2_submit_response(session, state.id, nva, count, &provider) }
        if result != 0 {
            self.shared.logger.debug("could not submit a response", metadata: ["stream": "\(state.id)", "error": "\(result)"])
        }
        if !self.inCallbacks && !self.deferringFlush { self.flushOutput() }
    }

    /// Asks nghttp2 to read a stream whose data provider had nothing to give.
    private func resume(_ state: RPCStreamState) {
        guard state.deferred, let session = self.session else { return }
        state.deferred = false
        _ = nghttp2_session_resume_data(session, state.id)
        if !self.inCallbacks && !self.deferringFlush { self.flushOutput() }
    }

    /// Ends a call with `code`: trailers-only if nothing was sent yet, else trailers after the data.
    private func respondStatus(_ state: RPCStreamState, code: Status.Code, message: String,
                               extra: [(name: String, value: String)] = [], metadata: Metadata = [:]) {
        guard !state.finished, let session = self.session else { return }
        state.finished = true
        if case .pending = state.kind { state.kind = .rejected }
        if case .immediate = state.kind { state.kind = .rejected }
        if case .task = state.kind { state.kind = .rejected }
        var trailers: [(name: String, value: String)] = [("grpc-status", "\(code.rawValue)")]
        if !message.isEmpty { trailers.append(("grpc-message", GRPCWire.percentEncoded(message))) }
        trailers += extra
        trailers += Self.headers(from: metadata)
        self.resetIfStillSending(state)
        if state.responseStarted {
            state.trailers = .custom(trailers)
            self.resume(state)
            return
        }
        state.responseStarted = true
        let result = NGHTTP2Headers.with(Self.responseHeaders + trailers) { nva, count in
            nghttp2_submit_response(session, state.id, nva, count, nil)
        }
        if result != 0 {
            self.shared.logger.debug("could not submit a status", metadata: ["stream": "\(state.id)", "error": "\(result)"])
        }
        // No RST_STREAM(NO_ERROR) follows for a request still being sent (RFC 9113 §8.1 allows
        // one): grpcio reads HEADERS and RST_STREAM arriving together as INTERNAL, losing the
        // status. The rest of such a request is dropped as it comes.
        if !self.inCallbacks && !self.deferringFlush { self.flushOutput() }
    }

    private func respondHTTPError(_ state: RPCStreamState, status: String, grpcStatus: Status.Code, message: String) {
        guard !state.finished, let session = self.session else { return }
        state.finished = true
        state.kind = .rejected
        state.responseStarted = true
        self.resetIfStillSending(state)
        let headers: [(name: String, value: String)] = [
            (":status", status), ("content-type", "application/grpc"),
            ("grpc-status", "\(grpcStatus.rawValue)"), ("grpc-message", GRPCWire.percentEncoded(message)),
        ]
        _ = NGHTTP2Headers.with(headers) { nva, count in nghttp2_submit_response(session, state.id, nva, count, nil) }
        if !self.inCallbacks && !self.deferringFlush { self.flushOutput() }
    }

    // MARK: Calls handed to grpc-swift

    private func startBridged(_ state: RPCStreamState) {
        let path = state.path
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].isEmpty, !parts[1].isEmpty, !parts[2].isEmpty,
              let context = self.context else {
            self.respondStatus(state, code: .unimplemented, message: "'\(path)' is not a gRPC method path (/package.Service/Method)")
            return
        }
        var metadata = Metadata()
        for (name, value) in state.headers {
            if name.hasSuffix("-bin") {
                if let bytes = GRPCWire.base64Decoded(value) { metadata.addBinary(bytes, forKey: name) }
            } else {
                metadata.addString(value, forKey: name)
            }
        }
        let (inbound, continuation) = AsyncThrowingStream<RPCRequestPart<[UInt8]>, any Error>.makeStream()
        continuation.yield(.metadata(metadata))
        state.inbound = continuation
        state.kind = .bridged
        let writer = BridgeWriter(connection: NIOLoopBound(self, eventLoop: context.eventLoop), loop: context.eventLoop,
                                  streamID: state.id)
        let descriptor = self.shared.methods[path] ?? MethodDescriptor(fullyQualifiedService: String(parts[1]), method: String(parts[2]))
        let incoming = IncomingRPC(descriptor: descriptor,
                                   inbound: inbound, outbound: writer, remotePeer: self.remotePeer, localPeer: self.localPeer)
        guard self.shared.deliver(incoming) else {
            state.inbound = nil
            continuation.finish()
            self.respondStatus(state, code: .unavailable, message: "the server is shutting down: call another instance or retry")
            return
        }
        self.startDeadline(state)
    }

    /// Ends the call with DEADLINE_EXCEEDED, cancelling its handler, once its `grpc-timeout` has
    /// passed (a malformed one ends it now).
    private func startDeadline(_ state: RPCStreamState) {
        guard let timeout = state.timeout, let context = self.context else { return }
        guard let duration = GRPCWire.timeout(timeout) else {
            self.refuse(state, code: .invalidArgument, message: "grpc-timeout '\(timeout)' is malformed: send 1 to 8 digits and a unit (H M S m u n)")
            return
        }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let id = state.id
        state.deadline = context.eventLoop.scheduleTask(in: TimeAmount(duration)) {
            loopBound.value.deadlineExpired(id)
        }
    }

    private func deadlineExpired(_ streamID: Int32) {
        guard let state = self.stream(streamID), !state.finished else { return }
        self.refuse(state, code: .deadlineExceeded, message: "the call's deadline (grpc-timeout \(state.timeout ?? "")) passed before it finished")
    }

    /// Passes each complete request message to the handler.
    private func deliverMessages(_ state: RPCStreamState) {
        while state.unreadBody >= GRPCWire.prefixLength {
            let offset = state.bodyOffset
            let flag = state.body[offset]
            let length = Int(state.body[offset + 1]) << 24 | Int(state.body[offset + 2]) << 16
                | Int(state.body[offset + 3]) << 8 | Int(state.body[offset + 4])
            if flag != 0 {
                self.refuse(state, code: .unimplemented, message: "the request message is compressed, which this server does not support: send it uncompressed")
                return
            }
            if length > self.shared.configuration.maxRequestBytes {
                self.reject(state, tooLarge: length)
                return
            }
            // The rest of this message has not arrived: what came before it is still accounted below.
            guard state.unreadBody >= GRPCWire.prefixLength + length else { break }
            let start = offset + GRPCWire.prefixLength
            state.inbound?.yield(.message(Array(state.body[start..<start + length])))
            state.bodyOffset = start + length
        }
        // Messages handed over stay counted against the connection until the stream ends:
        // grpc-swift's request stream buffers without limit and nghttp2 opens the flow-control
        // window as bytes arrive, so a peer sending message after message faster than the
        // handler reads (or to a method that takes one) would otherwise grow memory without
        // bound. Every bridged method takes one request message; a client-streaming one would
        // have its whole request bounded by the connection's budget.
    }

    /// Ends a handed-over call from this side (deadline, bad input): the status goes out now and
    /// the handler is cancelled.
    private func failBridged(_ state: RPCStreamState, code: Status.Code, message: String) {
        self.respondStatus(state, code: code, message: message)
        state.kind = .rejected
        state.inbound?.finish(throwing: RPCError(code: RPCError.Code(code) ?? .unknown, message: message))
        state.inbound = nil
        self.cancelHandler(state)
    }

    private func cancelHandler(_ state: RPCStreamState) {
        state.cancelled = true
        state.deadline?.cancel()
        state.deadline = nil
        state.task?.cancel()
        state.task = nil
        state.cancellation?.cancel()
        let writers = state.waitingWriters
        state.waitingWriters.removeAll()
        for writer in writers { writer.resume(throwing: RPCError(code: .cancelled, message: "the call ended")) }
    }

    /// A stream that closed before its handler finished, or with the connection.
    private func abandon(_ state: RPCStreamState, reason: String) {
        state.inbound?.finish(throwing: RPCError(code: .cancelled, message: reason))
        state.inbound = nil
        self.cancelHandler(state)
    }

    /// A stream that closed after its status went out.
    private func settle(_ state: RPCStreamState) {
        state.deadline?.cancel()
        state.deadline = nil
        state.inbound?.finish()
        state.inbound = nil
        let writers = state.waitingWriters
        state.waitingWriters.removeAll()
        for writer in writers { writer.resume(throwing: RPCError(code: .cancelled, message: "the call ended")) }
    }

    private func releaseWriters(_ state: RPCStreamState) {
        guard !state.waitingWriters.isEmpty, state.pendingOutboundBytes < self.shared.configuration.streamWriteBufferBytes else { return }
        let writers = state.waitingWriters
        state.waitingWriters.removeAll()
        for writer in writers { writer.resume() }
    }

    func attach(_ streamID: Int32, cancellation: ServerContext.RPCCancellationHandle) {
        guard let state = self.stream(streamID), !state.cancelled else {
            cancellation.cancel()
            return
        }
        state.cancellation = cancellation
    }

    func write(_ streamID: Int32, _ part: RPCResponsePart<[UInt8]>, _ done: CheckedContinuation<Void, any Error>) {
        guard let state = self.stream(streamID), !state.finished, !state.cancelled else {
            done.resume(throwing: RPCError(code: .cancelled, message: "the call ended before the reply was written"))
            return
        }
        switch part {
        case .metadata(let metadata):
            self.submitResponse(state, metadata: Self.headers(from: metadata))
            done.resume()
        case .message(let bytes):
            GRPCWire.appendFramed(bytes, to: &state.outbound)
            if !state.responseStarted {
                self.submitResponse(state)
            } else {
                self.resume(state)
            }
            if state.pendingOutboundBytes < self.shared.configuration.streamWriteBufferBytes || state.cancelled {
                done.resume()
            } else {
                state.waitingWriters.append(done)
            }
        case .status(let status, let metadata):
            self.respondStatus(state, code: status.code, message: status.message, metadata: metadata)
            state.deadline?.cancel()
            state.deadline = nil
            done.resume()
        }
    }

    /// The handler returned: a call it left without a status is ended here.
    func finish(_ streamID: Int32, error: (any Error)?) {
        guard let state = self.stream(streamID), !state.finished else { return }
        if let error = error as? RPCError {
            self.respondStatus(state, code: Status.Code(error.code), message: error.message)
        } else {
            self.respondStatus(state, code: .internalError, message: error.map { "internal error: \($0)" } ?? "the handler ended without a status")
        }
    }

    // MARK: Headers

    private static let reservedHeaders: Set<String> = ["content-type", "grpc-status", "grpc-message", "grpc-encoding",
                                                       "grpc-accept-encoding", "te", "connection", "transfer-encoding"]

    private static func headers(from metadata: Metadata) -> [(name: String, value: String)] {
        var headers: [(name: String, value: String)] = []
        for (key, value) in metadata {
            // HTTP/2 header names are lowercase (an uppercase one makes the block malformed and
            // the peer resets the stream, losing the status), and the server writes its own
            // status, content type and pseudo-headers.
            let key = key.lowercased()
            guard !key.hasPrefix(":"), !Self.reservedHeaders.contains(key) else { continue }
            switch value {
            case .string(let text): headers.append((key, text))
            case .binary(let bytes): headers.append((key.hasSuffix("-bin") ? key : key + "-bin", GRPCWire.base64(bytes)))
            }
        }
        return headers
    }

    /// `application/grpc`, alone or followed by `+format` or `;parameters`.
    private static func isGRPCContentType(_ value: UnsafeRawBufferPointer) -> Bool {
        let prefix: StaticString = "application/grpc"
        guard value.count >= prefix.utf8CodeUnitCount,
              Self.equals(UnsafeRawBufferPointer(rebasing: value[..<prefix.utf8CodeUnitCount]), prefix) else { return false }
        guard value.count > prefix.utf8CodeUnitCount else { return true }
        let next = value[prefix.utf8CodeUnitCount]
        return next == UInt8(ascii: "+") || next == UInt8(ascii: ";")
    }

    private static func equals(_ bytes: UnsafeRawBufferPointer, _ text: StaticString) -> Bool {
        guard bytes.count == text.utf8CodeUnitCount else { return false }
        guard let base = bytes.baseAddress else { return text.utf8CodeUnitCount == 0 }
        return memcmp(base, text.utf8Start, bytes.count) == 0
    }
}
