import CNghttp2

/// Header lists every successful unary call sends, built once as nghttp2 name-value pairs so
/// that a reply builds no header list. They are never freed, so nghttp2 is told not to copy the
/// names and values (it still allocates its array of pairs per submit).
struct StaticHeaders {
    let pairs: UnsafePointer<nghttp2_nv>
    let count: Int

    // Immutable after initialisation, never freed: safe to read from every event loop.
    nonisolated(unsafe) static let response = StaticHeaders([(":status", "200"), ("content-type", "application/grpc")])
    nonisolated(unsafe) static let okTrailers = StaticHeaders([("grpc-status", "0")])

    private init(_ headers: [(String, String)]) {
        let pairs = UnsafeMutablePointer<nghttp2_nv>.allocate(capacity: headers.count)
        for (index, (name, value)) in headers.enumerated() {
            let nameBytes = Array(name.utf8)
            let valueBytes = Array(value.utf8)
            let nameCopy = UnsafeMutablePointer<UInt8>.allocate(capacity: nameBytes.count)
            nameCopy.initialize(from: nameBytes, count: nameBytes.count)
            let valueCopy = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, valueBytes.count))
            valueCopy.initialize(from: valueBytes, count: valueBytes.count)
            pairs[index] = nghttp2_nv(name: nameCopy, value: valueCopy, namelen: nameBytes.count, valuelen: valueBytes.count,
                                      flags: UInt8(NGHTTP2_NV_FLAG_NO_COPY_NAME.rawValue | NGHTTP2_NV_FLAG_NO_COPY_VALUE.rawValue))
        }
        self.pairs = UnsafePointer(pairs)
        self.count = headers.count
    }
}
