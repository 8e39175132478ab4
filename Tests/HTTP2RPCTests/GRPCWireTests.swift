@testable import HTTP2RPC
import Testing

/// The gRPC wire encodings the server writes and reads besides HTTP/2 itself.
struct GRPCWireTests {
    @Test(arguments: [
        ("plain text", "plain text"),
        ("100%", "100%25"),
        ("ünï", "%C3%BCn%C3%AF"),
        ("tab\there", "tab%09here"),
        ("✓", "%E2%9C%93"),
    ])
    func statusMessagesArePercentEncoded(_ text: String, _ expected: String) {
        #expect(GRPCWire.percentEncoded(text) == expected)
    }

    @Test(arguments: ["plain text", "100%", "ünï ✓", "tab\there", "%41 stays", "50% off", ""])
    func percentDecodingUndoesTheEncoding(_ text: String) {
        #expect(GRPCWire.percentDecoded(GRPCWire.percentEncoded(text)) == text)
    }

    @Test(arguments: [("%", "%"), ("%4", "%4"), ("%zz", "%zz"), ("%FF", "%FF"), ("a%20b", "a b")])
    func malformedPercentEncodingIsKeptAsItCame(_ text: String, _ expected: String) {
        #expect(GRPCWire.percentDecoded(text) == expected)
    }

    @Test(arguments: [
        ("1H", Duration.seconds(3600)), ("2M", .seconds(120)), ("3S", .seconds(3)), ("200m", .milliseconds(200)),
        ("7u", .microseconds(7)), ("99999999n", .nanoseconds(99_999_999)),
    ])
    func timeoutsParse(_ text: String, _ expected: Duration) {
        #expect(GRPCWire.timeout(text) == expected)
    }

    @Test(arguments: ["", "S", "1", "123456789S", "1s", "-1S", "1 S", "１S"])
    func malformedTimeoutsAreRefused(_ text: String) {
        #expect(GRPCWire.timeout(text) == nil)
    }

    @Test(arguments: [Duration.nanoseconds(1), .nanoseconds(999), .microseconds(1500), .milliseconds(300), .seconds(30),
                      .seconds(98) + .nanoseconds(1), .seconds(150), .seconds(3600 * 24 * 365), .seconds(Int64.max / 2), .seconds(Int64.max)])
    func aTimeoutIsSentAsAValidHeaderNeverShorterThanItself(_ duration: Duration) throws {
        let header = GRPCWire.timeoutHeader(duration)
        let parsed = try #require(GRPCWire.timeout(header), "'\(header)' is not a valid grpc-timeout")
        #expect(parsed >= duration || header == "99999999H", "\(header) < \(duration)")
        // Rounded up by less than one of its unit: the finest unit that fits was chosen.
        let units: [Character: Duration] = ["n": .nanoseconds(1), "u": .microseconds(1), "m": .milliseconds(1),
                                            "S": .seconds(1), "M": .seconds(60), "H": .seconds(3600)]
        let unit = try #require(header.last.flatMap { units[$0] })
        #expect(parsed - duration < unit || header == "99999999H", "\(header) for \(duration)")
    }

    @Test func base64RoundTripsEveryLength() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<64 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let text = GRPCWire.base64(bytes)
            #expect(!text.contains("="), "gRPC sends binary metadata unpadded")
            #expect(GRPCWire.base64Decoded(text) == bytes)
            // Padded input, as some clients send, decodes the same.
            let padded = text + String(repeating: "=", count: (4 - text.count % 4) % 4)
            #expect(GRPCWire.base64Decoded(padded) == bytes)
        }
        #expect(GRPCWire.base64Decoded("not base64!") == nil)
    }

    @Test func messagesAreFramedWithTheirLength() {
        var bytes: [UInt8] = [9]
        GRPCWire.appendFramed([1, 2, 3], to: &bytes)
        #expect(bytes == [9, 0, 0, 0, 0, 3, 1, 2, 3])
        var empty: [UInt8] = []
        GRPCWire.appendFramed([], to: &empty)
        #expect(empty == [0, 0, 0, 0, 0])
    }
}
