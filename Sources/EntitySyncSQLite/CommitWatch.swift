import EntitySyncCore
import GRDB
import Synchronization

/// Wakes waiters soon after any connection, in this process or another, commits to the file:
/// `PRAGMA data_version` on a connection of its own changes whenever another one committed.
/// It is polled every `interval` only while someone waits (and for a short grace after, so
/// that back-to-back waits of one caller share one poller), so an idle store costs nothing.
final class CommitWatch: Sendable {
    private struct State {
        var waiters = 0
        var polling = false
        var lastWaitEnded = ContinuousClock.now
    }

    private let state = Mutex(State())
    /// Opened on first use; only the poller touches it, one poller at a time.
    private let connection = Mutex<DatabaseQueue?>(nil)
    private let signal = WakeSignal()
    private let path: String
    private let interval: Duration
    private let grace: Duration

    init(path: String, interval: Duration = .milliseconds(1), grace: Duration = .milliseconds(200)) {
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
        if start { Task { await self.poll() } }
        defer {
            self.state.withLock { state in
                state.waiters -= 1
                state.lastWaitEnded = .now
            }
        }
        await self.signal.wait(timeout: timeout)
    }

    private func poll() async {
        var last = self.dataVersion()
        // A commit between the caller's read and this first look would go unnoticed: wake the
        // waiters once, so that they read again against this baseline.
        self.signal.signal()
        while true {
            let grace = self.grace
            let keepGoing = self.state.withLock { state -> Bool in
                if state.waiters == 0 && state.lastWaitEnded + grace <= .now { state.polling = false }
                return state.polling
            }
            guard keepGoing else { return }
            try? await Task.sleep(for: self.interval)
            let current = self.dataVersion()
            // An unreadable file (nil) wakes the waiters too: they read the store and report it.
            if current != last || current == nil {
                last = current
                self.signal.signal()
            }
        }
    }

    private func dataVersion() -> Int? {
        do {
            let connection: DatabaseQueue
            if let open = self.connection.withLock({ $0 }) {
                connection = open
            } else {
                var configuration = Configuration()
                configuration.readonly = true
                connection = try DatabaseQueue(path: self.path, configuration: configuration)
                self.connection.withLock { $0 = connection }
            }
            return try connection.inDatabase { db in try Int.fetchOne(db, sql: "PRAGMA data_version") }
        } catch {
            return nil
        }
    }
}
