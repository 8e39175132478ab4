import NIOCore
import NIOSSL

/// How an `HTTP2RPCTransport` listens and what it allows one client connection to do.
public struct RPCServerConfiguration: Sendable {
    /// The address to bind; port 0 picks a free port (read it back with `listeningPort()`).
    public var host: String
    public var port: Int
    /// Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    public var maxConcurrentStreams: Int = 100
    /// The largest request message accepted; a larger one fails with RESOURCE_EXHAUSTED.
    public var maxRequestBytes: Int = 4 * 1024 * 1024
    /// Request bytes one connection may hold across its unfinished requests; a request that would
    /// go over fails with RESOURCE_EXHAUSTED.
    public var maxConnectionBufferBytes: Int = 16 * 1024 * 1024
    /// The largest request header list (SETTINGS_MAX_HEADER_LIST_SIZE); a larger one resets the stream.
    public var maxHeaderListBytes: Int = 16 * 1024
    /// A connection with no open stream for this long is closed with GOAWAY.
    public var idleTimeout: Duration = .seconds(300)
    /// How often the server pings a connection to find out that its peer is gone.
    public var keepaliveInterval: Duration = .seconds(60)
    /// How long a keepalive PING may go unanswered before the connection is closed.
    public var keepaliveTimeout: Duration = .seconds(20)
    /// How many outbound bytes one server-streaming call may have queued before its writer waits
    /// for the client to read (HTTP/2 flow control decides when that happens).
    public var streamWriteBufferBytes: Int = 64 * 1024
    /// RST_STREAMs a peer may cause in a burst, then per second (CVE-2023-44487, "rapid reset").
    public var resetBurst: UInt64 = 1000
    public var resetsPerSecond: UInt64 = 33
    /// Event-loop threads serving connections, each owning the connections it accepted: a group
    /// of this many made for the server, or NIO's shared group (one loop per core) when nil.
    public var loopThreads: Int?
    /// The loops of NIO's shared group, which serves when `loopThreads` is nil.
    public static var defaultLoopThreads: Int { NIOSingletons.groupLoopCountSuggestion }
    /// TLS with ALPN `h2` when set; plaintext h2c with prior knowledge otherwise.
    public var tls: TLSConfiguration?

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
}
