import CRabbitMQ
import Foundation

/// Owns C memory handed to librabbitmq for the duration of one call (strings, tables).
/// librabbitmq copies what it sends, so everything is released by `reset()` after the call.
/// A bump allocator over reusable chunks: publishing allocates nothing in steady state.
final class CArena {
    private static let chunkSize = 16 * 1024
    private var chunks: [(pointer: UnsafeMutableRawPointer, size: Int)] = []
    private var current = 0
    private var offset = 0

    deinit {
        for chunk in self.chunks { free(chunk.pointer) }
    }

    /// Releases everything allocated since the last reset; keeps one chunk for reuse.
    func reset() {
        while self.chunks.count > 1, let last = self.chunks.popLast() { free(last.pointer) }
        self.current = 0
        self.offset = 0
    }

    private func allocate(_ size: Int) -> UnsafeMutableRawPointer {
        let aligned = (size + 7) & ~7
        if self.current < self.chunks.count, self.offset + aligned <= self.chunks[self.current].size {
            defer { self.offset += aligned }
            return self.chunks[self.current].pointer + self.offset
        }
        let chunkSize = max(Self.chunkSize, aligned)
        guard let pointer = malloc(chunkSize) else { fatalError("out of memory allocating \(chunkSize) bytes") }
        self.chunks.append((pointer, chunkSize))
        self.current = self.chunks.count - 1
        self.offset = aligned
        return pointer
    }

    /// A NUL-terminated copy of `string` (the terminator is not counted in `len`).
    func bytes(_ string: String) -> amqp_bytes_t {
        var string = string
        return string.withUTF8 { utf8 in
            let pointer = self.allocate(utf8.count + 1)
            if let base = utf8.baseAddress { pointer.copyMemory(from: base, byteCount: utf8.count) }
            pointer.storeBytes(of: 0, toByteOffset: utf8.count, as: UInt8.self)
            return amqp_bytes_t(len: utf8.count, bytes: pointer)
        }
    }

    func bytes(_ array: [UInt8]) -> amqp_bytes_t {
        let pointer = self.allocate(array.count)
        array.withUnsafeBytes { source in
            if let base = source.baseAddress { pointer.copyMemory(from: base, byteCount: source.count) }
        }
        return amqp_bytes_t(len: array.count, bytes: pointer)
    }

    func cString(_ string: String) -> UnsafePointer<CChar> {
        let bytes = self.bytes(string)
        return UnsafePointer(bytes.bytes.assumingMemoryBound(to: CChar.self))
    }

    func table(_ table: AMQPTable) -> amqp_table_t {
        guard !table.isEmpty else { return amqp_table_t(num_entries: 0, entries: nil) }
        let entries = self.allocate(MemoryLayout<amqp_table_entry_t>.stride * table.count)
            .bindMemory(to: amqp_table_entry_t.self, capacity: table.count)
        // Sorted so the same table always encodes to the same bytes.
        for (index, (key, value)) in table.sorted(by: { $0.key < $1.key }).enumerated() {
            entries[index] = amqp_table_entry_t(key: self.bytes(key), value: self.field(value))
        }
        return amqp_table_t(num_entries: Int32(table.count), entries: entries)
    }

    func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        switch value {
        case .bool(let flag):
            field.kind = Self.kind(AMQP_FIELD_KIND_BOOLEAN)
            field.value.boolean = flag ? 1 : 0
        case .int(let number):
            field.kind = Self.kind(AMQP_FIELD_KIND_I64)
            field.value.i64 = number
        case .double(let number):
            field.kind = Self.kind(AMQP_FIELD_KIND_F64)
            field.value.f64 = number
        case .string(let text):
            field.kind = Self.kind(AMQP_FIELD_KIND_UTF8)
            field.value.bytes = self.bytes(text)
        case .bytes(let data):
            field.kind = Self.kind(AMQP_FIELD_KIND_BYTES)
            field.value.bytes = self.bytes(data)
        case .timestamp(let seconds):
            field.kind = Self.kind(AMQP_FIELD_KIND_TIMESTAMP)
            field.value.u64 = seconds
        case .array(let values):
            field.kind = Self.kind(AMQP_FIELD_KIND_ARRAY)
            let entries = self.allocate(MemoryLayout<amqp_field_value_t>.stride * max(values.count, 1))
                .bindMemory(to: amqp_field_value_t.self, capacity: max(values.count, 1))
            for (index, element) in values.enumerated() { entries[index] = self.field(element) }
            field.value.array = amqp_array_t(num_entries: Int32(values.count), entries: entries)
        case .table(let nested):
            field.kind = Self.kind(AMQP_FIELD_KIND_TABLE)
            field.value.table = self.table(nested)
        case .void:
            field.kind = Self.kind(AMQP_FIELD_KIND_VOID)
        }
        return field
    }

    static func kind(_ kind: amqp_field_value_kind_t) -> UInt8 { UInt8(truncatingIfNeeded: kind.rawValue) }
}

extension amqp_bytes_t {
    /// A Swift copy of the bytes as text (invalid UTF-8 is repaired, not trapped on).
    var string: String {
        guard self.len > 0, let bytes = self.bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: bytes, count: self.len), as: UTF8.self)
    }

    var array: [UInt8] {
        guard self.len > 0, let bytes = self.bytes else { return [] }
        return Array(UnsafeRawBufferPointer(start: bytes, count: self.len))
    }
}

enum FieldTableDecoder {
    /// Tables and arrays nested deeper than this decode as empty. A publisher can nest thousands
    /// of levels in one frame; decoding (and later releasing) them recursively would run the
    /// connection's thread out of stack. Headers anyone uses nest two or three levels.
    static let depthLimit = 32

    static func decode(_ table: amqp_table_t, depth: Int = 0) -> AMQPTable {
        guard depth < Self.depthLimit, table.num_entries > 0, let entries = table.entries else { return [:] }
        // Sized once: growing from empty rehashed the table at each doubling, for every message.
        var result = AMQPTable(minimumCapacity: Int(table.num_entries))
        for index in 0..<Int(table.num_entries) {
            let entry = entries[index]
            result[entry.key.string] = self.decode(entry.value, depth: depth + 1)
        }
        return result
    }

    static func decode(_ field: amqp_field_value_t, depth: Int = 0) -> AMQPFieldValue {
        switch field.kind {
        case CArena.kind(AMQP_FIELD_KIND_BOOLEAN): return .bool(field.value.boolean != 0)
        case CArena.kind(AMQP_FIELD_KIND_I8): return .int(Int64(field.value.i8))
        case CArena.kind(AMQP_FIELD_KIND_U8): return .int(Int64(field.value.u8))
        case CArena.kind(AMQP_FIELD_KIND_I16): return .int(Int64(field.value.i16))
        case CArena.kind(AMQP_FIELD_KIND_U16): return .int(Int64(field.value.u16))
        case CArena.kind(AMQP_FIELD_KIND_I32): return .int(Int64(field.value.i32))
        case CArena.kind(AMQP_FIELD_KIND_U32): return .int(Int64(field.value.u32))
        case CArena.kind(AMQP_FIELD_KIND_I64): return .int(field.value.i64)
        case CArena.kind(AMQP_FIELD_KIND_U64): return .int(Int64(truncatingIfNeeded: field.value.u64))
        case CArena.kind(AMQP_FIELD_KIND_F32): return .double(Double(field.value.f32))
        case CArena.kind(AMQP_FIELD_KIND_F64): return .double(field.value.f64)
        case CArena.kind(AMQP_FIELD_KIND_UTF8): return .string(field.value.bytes.string)
        case CArena.kind(AMQP_FIELD_KIND_BYTES): return .bytes(field.value.bytes.array)
        case CArena.kind(AMQP_FIELD_KIND_TIMESTAMP): return .timestamp(field.value.u64)
        case CArena.kind(AMQP_FIELD_KIND_TABLE): return .table(self.decode(field.value.table, depth: depth))
        case CArena.kind(AMQP_FIELD_KIND_ARRAY):
            let array = field.value.array
            guard depth < Self.depthLimit, array.num_entries > 0, let entries = array.entries else { return .array([]) }
            return .array((0..<Int(array.num_entries)).map { self.decode(entries[$0], depth: depth + 1) })
        case CArena.kind(AMQP_FIELD_KIND_DECIMAL):
            let decimal = field.value.decimal
            return .double(Double(decimal.value) / pow(10, Double(decimal.decimals)))
        default: return .void
        }
    }
}
