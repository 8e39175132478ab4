/// The small encodings of the gRPC-over-HTTP/2 wire format that are not HTTP/2 itself: the
/// percent-encoded `grpc-message`, the `grpc-timeout` value, the 5-byte message prefix and
/// base64 for `-bin` metadata.
enum GRPCWire {
    /// The 5-byte prefix of a length-prefixed message: compressed flag, then big-endian length.
    static let prefixLength = 5

    /// Byte `index` (0..<5) of an uncompressed message's prefix: the compressed flag (0), then
    /// the big-endian length.
    static func prefixByte(_ index: Int, messageLength: UInt32) -> UInt8 {
        index == 0 ? 0 : UInt8(truncatingIfNeeded: messageLength >> UInt32(8 * (4 - index)))
    }

    /// Appends `message` with its prefix (uncompressed) to `bytes`.
    static func appendFramed(_ message: [UInt8], to bytes: inout [UInt8]) {
        let length = UInt32(truncatingIfNeeded: message.count)
        for index in 0..<self.prefixLength { bytes.append(self.prefixByte(index, messageLength: length)) }
        bytes.append(contentsOf: message)
    }

    /// `grpc-message` is percent-encoded UTF-8: everything outside printable ASCII, and '%' itself.
    static func percentEncoded(_ message: String) -> String {
        var needsEncoding = false
        for byte in message.utf8 where byte < 0x20 || byte > 0x7E || byte == 0x25 {
            needsEncoding = true
            break
        }
        guard needsEncoding else { return message }
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(message.utf8.count * 2)
        for byte in message.utf8 {
            if byte < 0x20 || byte > 0x7E || byte == 0x25 {
                out.append(0x25)
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0F)])
            } else {
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Undoes `percentEncoded` (a `grpc-message` as sent); text that is not valid percent-encoded
    /// UTF-8 is kept as it came.
    static func percentDecoded(_ text: String) -> String {
        guard text.utf8.contains(UInt8(ascii: "%")) else { return text }
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "%"), utf8.count >= 2,
               let high = Self.hexValue(utf8[utf8.startIndex]), let low = Self.hexValue(utf8[utf8.startIndex + 1]) {
                bytes.append(high << 4 | low)
                utf8 = utf8.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self) ?? text
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// Parses `grpc-timeout` ("1-8 ASCII digits" then a unit H M S m u n); nil when malformed.
    static func timeout(_ value: String) -> Duration? {
        let bytes = Array(value.utf8)
        guard bytes.count >= 2, bytes.count <= 9, let unit = bytes.last else { return nil }
        var amount: Int64 = 0
        for byte in bytes.dropLast() {
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            amount = amount * 10 + Int64(byte - 0x30)
        }
        switch unit {
        case UInt8(ascii: "H"): return .seconds(amount * 3600)
        case UInt8(ascii: "M"): return .seconds(amount * 60)
        case UInt8(ascii: "S"): return .seconds(amount)
        case UInt8(ascii: "m"): return .milliseconds(amount)
        case UInt8(ascii: "u"): return .microseconds(amount)
        case UInt8(ascii: "n"): return .nanoseconds(amount)
        default: return nil
        }
    }

    /// The longest timeout `grpc-timeout` can carry (99,999,999 hours).
    static let longestTimeout = Duration.seconds(99_999_999 * 3600)

    /// `duration` as a `grpc-timeout` value: the finest unit whose count fits in 8 digits, rounded
    /// up so the server never sees a shorter deadline than the caller's.
    static func timeoutHeader(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, attoseconds >= 0, seconds > 0 || attoseconds > 0 else { return "1n" }
        let limit: Int64 = 99_999_999
        // Past the longest timeout the header can say (also keeps the sums below from overflowing).
        guard seconds < limit * 3600 else { return "\(limit)H" }
        // Nanoseconds, rounded up; a duration too long for them goes by whole units below.
        if seconds < 99 {
            let nanoseconds = seconds * 1_000_000_000 + (attoseconds + 999_999_999) / 1_000_000_000
            for (divisor, unit) in [(Int64(1), "n"), (1_000, "u"), (1_000_000, "m")] {
                let count = (nanoseconds + divisor - 1) / divisor
                if count <= limit { return "\(count)\(unit)" }
            }
        }
        let wholeSeconds = seconds + (attoseconds > 0 ? 1 : 0)
        for (divisor, unit) in [(Int64(1), "S"), (60, "M"), (3600, "H")] {
            let count = (wholeSeconds + divisor - 1) / divisor
            if count <= limit { return "\(count)\(unit)" }
        }
        return "\(limit)H"
    }

    private static let base64Alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// Base64 without padding, as gRPC sends binary metadata.
    static func base64(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index + 3 <= bytes.count {
            let chunk = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            for shift in [18, 12, 6, 0] { out.append(self.base64Alphabet[Int((chunk >> UInt32(shift)) & 0x3F)]) }
            index += 3
        }
        let rest = bytes.count - index
        if rest > 0 {
            var chunk = UInt32(bytes[index]) << 16
            if rest == 2 { chunk |= UInt32(bytes[index + 1]) << 8 }
            out.append(self.base64Alphabet[Int((chunk >> 18) & 0x3F)])
            out.append(self.base64Alphabet[Int((chunk >> 12) & 0x3F)])
            if rest == 2 { out.append(self.base64Alphabet[Int((chunk >> 6) & 0x3F)]) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes base64 with or without padding; nil when the text is not base64.
    static func base64Decoded(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        var accumulator: UInt32 = 0
        var bits = 0
        for byte in text.utf8 {
            let value: UInt8
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = byte - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = byte - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = byte - UInt8(ascii: "0") + 52
            case UInt8(ascii: "+"), UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "/"), UInt8(ascii: "_"): value = 63
            case UInt8(ascii: "="): continue
            default: return nil
            }
            accumulator = accumulator << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        return out
    }
}
