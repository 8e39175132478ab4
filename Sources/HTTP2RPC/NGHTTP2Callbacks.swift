import CNghttp2

/// The C callbacks every server (and every client) session shares. They capture nothing: the
/// connection arrives as `user_data` (unretained; the connection owns the session and deletes
/// it before it goes).
enum NGHTTP2Callbacks {
    // Written once here and only read afterwards; nghttp2_session_server_new copies it.
    nonisolated(unsafe) static let server: OpaquePointer? = {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else { return nil }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, userData in
            guard let frame, let userData else { return 0 }
            return HTTP2Connection.with(userData) { $0.onBeginHeaders(frame) }
        }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, userData in
            guard let frame, let name, let value, let userData else { return 0 }
            return HTTP2Connection.with(userData) {
                $0.onHeader(frame, name: UnsafeRawBufferPointer(start: name, count: nameLength),
                            value: UnsafeRawBufferPointer(start: value, count: valueLength))
            }
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, userData in
            guard let frame, let userData else { return 0 }
            return HTTP2Connection.with(userData) { $0.onFrameReceived(frame) }
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, streamID, data, length, userData in
            guard let userData else { return 0 }
            return HTTP2Connection.with(userData) { $0.onData(streamID, UnsafeRawBufferPointer(start: data, count: length)) }
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamID, errorCode, userData in
            guard let userData else { return 0 }
            return HTTP2Connection.with(userData) { $0.onStreamClosed(streamID, errorCode: errorCode) }
        }
        return callbacks
    }()

    /// The data provider of every response: it reads the stream's queued bytes.
    static let read: nghttp2_data_source_read_callback = { _, streamID, buffer, length, flags, _, userData in
        guard let userData, let buffer, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
        return HTTP2Connection.with(userData) { $0.readResponse(streamID, into: buffer, length: length, flags: flags) }
    }

    // Written once here and only read afterwards; nghttp2_session_client_new copies it.
    nonisolated(unsafe) static let client: OpaquePointer? = {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else { return nil }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, userData in
            guard let frame, let name, let value, let userData else { return 0 }
            return HTTP2ClientConnection.with(userData) {
                $0.onHeader(frame, name: UnsafeRawBufferPointer(start: name, count: nameLength),
                            value: UnsafeRawBufferPointer(start: value, count: valueLength))
            }
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, userData in
            guard let frame, let userData else { return 0 }
            return HTTP2ClientConnection.with(userData) { $0.onFrameReceived(frame) }
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, streamID, data, length, userData in
            guard let userData else { return 0 }
            return HTTP2ClientConnection.with(userData) { $0.onData(streamID, UnsafeRawBufferPointer(start: data, count: length)) }
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamID, errorCode, userData in
            guard let userData else { return 0 }
            return HTTP2ClientConnection.with(userData) { $0.onStreamClosed(streamID, errorCode: errorCode) }
        }
        return callbacks
    }()

    /// The data provider of every client request: it reads the call's framed request.
    static let readRequest: nghttp2_data_source_read_callback = { _, streamID, buffer, length, flags, _, userData in
        guard let userData, let buffer, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
        return HTTP2ClientConnection.with(userData) { $0.readRequest(streamID, into: buffer, length: length, flags: flags) }
    }
}
