import Synchronization

/// A Mutex in a class, so it can be stored in other Sendable classes and structs.
final class MutexBox<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) { self.mutex = Mutex(value) }

    func read<Result>(_ body: (Value) -> Result) -> Result { self.mutex.withLock { body($0) } }

    func update<Result>(_ body: (inout Value) -> Result) -> Result { self.mutex.withLock { body(&$0) } }
}
