import CNghttp2

/// Headers handed to libnghttp2.
enum NGHTTP2Headers {
    /// Calls `body` with `headers` as nghttp2 name-value pairs (nghttp2 copies them).
    static func with<Result>(_ headers: [(name: String, value: String)],
                             _ body: (UnsafePointer<nghttp2_nv>?, Int) -> Result) -> Result {
        var storage: [UInt8] = []
        var ranges: [(Int, Int, Int, Int)] = []
        ranges.reserveCapacity(headers.count)
        for (name, value) in headers {
            let nameStart = storage.count
            storage.append(contentsOf: name.utf8)
            let valueStart = storage.count
            storage.append(contentsOf: value.utf8)
            ranges.append((nameStart, valueStart - nameStart, valueStart, storage.count - valueStart))
        }
        storage.append(0)
        return storage.withUnsafeMutableBufferPointer { bytes in
            // Never nil: `storage` has at least the terminating zero.
            guard let base = bytes.baseAddress else { return body(nil, 0) }
            let pairs = ranges.map { range in
                nghttp2_nv(name: base + range.0, value: base + range.2, namelen: range.1, valuelen: range.3,
                           flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
            }
            return pairs.withUnsafeBufferPointer { body($0.baseAddress, $0.count) }
        }
    }
}
