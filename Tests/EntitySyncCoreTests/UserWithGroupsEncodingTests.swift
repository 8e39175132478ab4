import EntitySyncCore
import EntitySyncProto
import EntitySyncTestSupport
import Testing

/// The GetUser reply built from stored messages without decoding them decodes to the reply
/// swift-protobuf would have built, whatever the sizes and the order the parts come in.
struct UserWithGroupsEncodingTests {
    @Test(arguments: [0, 1, 127, 128, 16_384, 300_000])
    func decodesToTheSameReply(nameLength: Int) throws {
        let user = Fixtures.user("u1", name: String(repeating: "a", count: max(1, nameLength)))
        let groups = [Fixtures.group("g1"), Fixtures.group("g2", members: ["u1"])]
        let userBytes: [UInt8] = try user.serializedBytes()
        let groupBytes: [[UInt8]] = try groups.map { try $0.serializedBytes() }
        var expected = Entitysync_V1_UserWithGroups()
        expected.user = user
        expected.groups = groups
        for groupsFirst in [false, true] {
            var encoding = UserWithGroupsEncoding()
            if !groupsFirst { userBytes.withUnsafeBytes { encoding.appendUser($0) } }
            for bytes in groupBytes { bytes.withUnsafeBytes { encoding.appendGroup($0) } }
            if groupsFirst { userBytes.withUnsafeBytes { encoding.appendUser($0) } }
            #expect(try Entitysync_V1_UserWithGroups(serializedBytes: encoding.bytes) == expected)
        }
    }
}
