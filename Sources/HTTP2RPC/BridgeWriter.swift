import GRPCCore
import NIOCore

/// A call handed from a connection to the grpc-swift services.
struct IncomingRPC: Sendable {
    let descriptor: MethodDescriptor
    let inbound: AsyncThrowingStream<RPCRequestPart<[UInt8]>, any Error>
    let outbound: BridgeWriter
    let remotePeer: String
    let localPeer: String
}

/// Carries a handler's response parts back to its connection's event loop. A write returns once
/// the part is queued, or — for a stream whose reader lags — once HTTP/2 flow control has let
/// enough of the queue go out, so a slow reader holds bounded memory.
struct BridgeWriter: ClosableRPCWriterProtocol {
    typealias Element = RPCResponsePart<[UInt8]>

    let connection: NIOLoopBound<HTTP2Connection>
    let loop: any EventLoop
    let streamID: Int32

    func write(_ element: RPCResponsePart<[UInt8]>) async throws {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
            self.loop.execute { self.connection.value.write(self.streamID, element, done) }
        }
    }

    func write(contentsOf elements: some Sequence<RPCResponsePart<[UInt8]>>) async throws {
        for element in elements { try await self.write(element) }
    }

    func finish() async {
        self.loop.execute { self.connection.value.finish(self.streamID, error: nil) }
    }

    func finish(throwing error: any Error) async {
        self.loop.execute { self.connection.value.finish(self.streamID, error: error) }
    }

    /// Lets a client's RST_STREAM or a passed deadline cancel the handler.
    func attach(_ cancellation: ServerContext.RPCCancellationHandle) {
        self.loop.execute { self.connection.value.attach(self.streamID, cancellation: cancellation) }
    }
}
