@testable import AMQPClient
import Testing

/// The channel index beside the consumers: every delivery finds its consumer through it, so it
/// must follow additions, removals and replacements made through any of the table's accessors.
@Suite struct ConsumerTableTests {
    private static func state(id: Int, channel: UInt16) -> ConsumerState {
        let (_, continuation) = DeliveryStream.makeStream()
        return ConsumerState(registration: ConsumerRegistration(id: id, queue: "q\(id)", prefetch: 10,
                                                                continuation: continuation),
                             channel: channel)
    }

    @Test func theIndexFollowsInsertionRemovalAndReplacement() {
        var table = ConsumerTable()
        table[1] = Self.state(id: 1, channel: 5)
        table[2] = Self.state(id: 2, channel: 6)
        #expect(table.id(onChannel: 5) == 1)
        #expect(table.id(onChannel: 6) == 2)
        #expect(table.id(onChannel: 7) == nil)

        // Removal through assignment, through removeValue, and the channel reused by another id.
        table[1] = nil
        #expect(table.id(onChannel: 5) == nil)
        table[3] = Self.state(id: 3, channel: 5)
        #expect(table.id(onChannel: 5) == 3)
        #expect(table.removeValue(forKey: 3)?.channel == 5)
        #expect(table.id(onChannel: 5) == nil)

        // An id given a state on another channel leaves the old channel unowned.
        table[2] = Self.state(id: 2, channel: 9)
        #expect(table.id(onChannel: 6) == nil)
        #expect(table.id(onChannel: 9) == 2)

        // A removal of an id must not drop the entry of the id that took its channel since.
        table[4] = Self.state(id: 4, channel: 9)
        #expect(table.id(onChannel: 9) == 4)
        table[2] = nil
        #expect(table.id(onChannel: 9) == 4)

        table.removeAll()
        #expect(table.id(onChannel: 9) == nil)
        #expect(table.isEmpty)
    }

    @Test func inPlaceUpdatesChangeTheStoredStateAndNotTheIndex() {
        var table = ConsumerTable()
        table[1] = Self.state(id: 1, channel: 5)
        table[1]?.epoch = 3
        let epoch = table.update(1) { state -> UInt64 in
            state.unsettled.append(7)
            state.unsettled.append(8)
            return state.epoch
        }
        #expect(epoch == 3)
        #expect(Array(table[1]?.unsettled ?? []) == [7, 8])
        #expect(table.update(2) { _ in true } == nil)
        #expect(table.id(onChannel: 5) == 1)
    }
}
