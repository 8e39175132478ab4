@testable import HTTP2RPC
import Testing

/// A unary reply goes out as its prefix and then its bytes, however nghttp2 sizes its buffers.
@Suite struct RPCStreamStateTests {
    /// Drains `state` through the data provider's copy step, `chunk` bytes at a time.
    private func drain(_ state: RPCStreamState, chunk: Int) -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0xEE, count: chunk)
        while state.pendingOutboundBytes > 0 {
            let taken = buffer.withUnsafeMutableBufferPointer { pointer -> Int in
                guard let base = pointer.baseAddress else { return 0 }
                return state.takeOutbound(into: base, length: chunk)
            }
            #expect(taken > 0, "a pending stream must give bytes")
            if taken == 0 { break }
            out.append(contentsOf: buffer[0..<taken])
        }
        return out
    }

    @Test(arguments: [1, 2, 4, 5, 6, 300, 16_384])
    func aUnaryReplyGoesOutFramedInAnyChunkSize(chunk: Int) {
        let message = (0..<259).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let state = RPCStreamState(id: 1)
        state.setUnaryReply(message)
        #expect(state.pendingOutboundBytes == message.count + 5)
        var expected: [UInt8] = []
        GRPCWire.appendFramed(message, to: &expected)
        #expect(self.drain(state, chunk: chunk) == expected)
        #expect(state.pendingOutboundBytes == 0)
        #expect(state.outboundPrefixLength == nil)
    }

    @Test func anEmptyReplyIsItsPrefixAlone() {
        let state = RPCStreamState(id: 3)
        state.setUnaryReply([])
        #expect(self.drain(state, chunk: 3) == [0, 0, 0, 0, 0])
    }

    /// A bridged call's framed messages go out as appended, across chunks and appends.
    @Test(arguments: [1, 7, 16_384])
    func streamedMessagesGoOutAsAppended(chunk: Int) {
        let state = RPCStreamState(id: 5)
        var expected: [UInt8] = []
        for size in [0, 3, 1000] {
            let message = [UInt8](repeating: UInt8(size % 251), count: size)
            GRPCWire.appendFramed(message, to: &state.outbound)
            GRPCWire.appendFramed(message, to: &expected)
        }
        #expect(self.drain(state, chunk: chunk) == expected)
        #expect(state.outbound.isEmpty && state.outboundOffset == 0)
    }
}

/// The connection's list of open streams: insertion, removal from any place, and emptying.
@Suite struct RPCStreamListTests {
    @Test func streamsLeaveTheListFromAnyPlace() {
        var list = RPCStreamState.List()
        #expect(list.isEmpty)
        let states = (0..<5).map { RPCStreamState(id: Int32($0 * 2 + 1)) }
        for state in states { list.insert(state) }
        #expect(states.allSatisfy { $0.isListed })
        list.remove(states[2]) // middle
        list.remove(states[4]) // first (the most recent)
        list.remove(states[0]) // last
        list.remove(states[0]) // again: nothing happens
        #expect(!states[2].isListed && !states[4].isListed && !states[0].isListed)
        #expect(list.removeAll().map(\.id) == [7, 3])
        #expect(list.isEmpty)
        #expect(states.allSatisfy { !$0.isListed })
    }

    @Test func aLongListIsReleasedWithoutDeepRecursion() {
        weak var last: RPCStreamState?
        do {
            var list = RPCStreamState.List()
            for id in 0..<200_000 {
                let state = RPCStreamState(id: Int32(id))
                if id == 0 { last = state }
                list.insert(state)
            }
            #expect(list.removeAll().count == 200_000)
        }
        #expect(last == nil, "every state is released once the list is emptied")
    }
}
