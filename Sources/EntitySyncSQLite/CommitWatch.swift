import EntitySyncCore
import Foundation
import GRDBSQLite
import Synchronization

/// Wakes waiters soon after any connection, in this process or another, commits to the file:
/// `PRAGMA data_version` on a connection of its own changes whenever another one committed.
/// It is polled every `interval` only while someone waits (and for a short grace after, so
/// that back-to-back waits of one caller share one poller), so an idle store costs nothing.
///
/// The poller is a thread of its own that sleeps between reads, on a raw read-only connection:
/// a poll costs one wake-up and one statement. A `Task.sleep` loop reading through GRDB cost a
/// dispatch timer, a hop to the manager thread and one to GRDB's queue per poll, about 90 µs:
/// 15% of a consumer's CPU during catch-up while one caller waited.
final class CommitWatch: Sendable {
    private struct State {
        var waiters = 0
        var polling = false
        var lastWaitEnded = ContinuousClock.now
    }

    private let state = Mutex(State())
    private let signal = WakeSignal()
    private let path: String
    private let interval: Duration
    private let grace: Duration

    /// Every `interval` while anyone waits: 5 ms, since `VersionWaiters` answers this process's
    /// own applies directly and rechecks the store at most every 25 ms; at 1 ms the poller's
    /// wake-ups were a tenth of a consumer's thread switches under a steady stream of waits.
    init(path: String, interval: Duration = .milliseconds(5), grace: Duration = .milliseconds(200)) {
        self.path = path
        self.interval = interval
        self.grace = grace
    }

    /// Returns after a commit seen since the call (or a little before it), or after `timeout`.
    func wait(timeout: Duration) async {
        let start = self.state.withLock { state -> Bool in
            state.waiters += 1
            guard !state.polling else { return false }
            state.polling = true
            return true
        }
        if start { Thread.detachNewThread { self.poll() } }
        defer {
            self.state.withLock { state in
                state.waiters -= 1
                state.lastWaitEnded = .now
            }
        }
        await self.signal.wait(timeout: timeout)
    }

    private func poll() {
        var reader = DataVersionReader(path: self.path)
        var last = reader?.read()
        // A commit between the caller's read and this first look would go unnoticed: wake the
        // waiters once, so that they read again against this baseline.
        self.signal.signal()
        let pause = Self.timespec(self.interval)
        while true {
            let grace = self.grace
            let keepGoing = self.state.withLock { state -> Bool in
                if state.waiters == 0 && state.lastWaitEnded + grace <= .now { state.polling = false }
                return state.polling
            }
            guard keepGoing else { return }
            var remaining = pause
            nanosleep(&remaining, nil)
            if reader == nil { reader = DataVersionReader(path: self.path) }
            let current = reader?.read()
            // An unreadable file (nil) wakes the waiters too: they read the store and report it.
            if current != last || current == nil {
                last = current
                self.signal.signal()
            }
            // After a failed read (the file unreadable for a moment, busy), start over with a
            // fresh connection rather than trust this one.
            if current == nil { reader = nil }
        }
    }

    private static func timespec(_ duration: Duration) -> Foundation.timespec {
        let (seconds, attoseconds) = duration.components
        return Foundation.timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    }
}

/// `PRAGMA data_version` on a read-only connection of its own, prepared once. Used by one
/// thread only.
private final class DataVersionReader {
    private let handle: OpaquePointer
    private let statement: OpaquePointer

    init?(path: String) {
        var handle: OpaquePointer?
        guard sqlite3_open_v2(path, &handle, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK, let handle else {
            sqlite3_close(handle)
            return nil
        }
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(handle, "PRAGMA data_version", -1, &statement, nil) == SQLITE_OK, let statement else {
            sqlite3_close(handle)
            return nil
        }
        self.handle = handle
        self.statement = statement
    }

    deinit {
        sqlite3_finalize(self.statement)
        sqlite3_close(self.handle)
    }

    /// The file's data version, or nil if it could not be read.
    func read() -> Int64? {
        defer { sqlite3_reset(self.statement) }
        guard sqlite3_step(self.statement) == SQLITE_ROW else { return nil }
        return sqlite3_column_int64(self.statement, 0)
    }
}
