import EntitySyncCore
import Synchronization

/// Wakes waiters when any instance of the group commits a change: every apply that writes sends
/// `NOTIFY` on a channel named after the store's schema, in its transaction (so it is delivered
/// at commit), and one pooled connection per process listens on it, from the first wait until
/// the store closes. While that connection is down, waiters fall back to their timeout.
final class PostgresCommitWatch: Sendable {
    private let database: PostgresDatabase
    /// The schema's name, which is a valid identifier of at most 63 bytes.
    let channel: String
    private let signal = WakeSignal()
    private let listener = Mutex<(task: Task<Void, Never>?, stopped: Bool)>((nil, false))

    init(database: PostgresDatabase) {
        self.database = database
        self.channel = database.schema
    }

    /// Returns after a commit notified since the listener started, or after `timeout`.
    func wait(timeout: Duration) async {
        self.listener.withLock { listener in
            guard listener.task == nil, !listener.stopped else { return }
            listener.task = Task { await self.listen() }
        }
        await self.signal.wait(timeout: timeout)
    }

    /// Ends the listener (the store is closing).
    func stop() {
        self.listener.withLock { listener in
            listener.stopped = true
            listener.task?.cancel()
        }
    }

    private func listen() async {
        var attempt = 0
        while !Task.isCancelled {
            let started = ContinuousClock.now
            do {
                // Once listening, commits made before were not notified to this connection: the
                // first signal makes waiters read again.
                try await self.database.listen(self.channel) { self.signal.signal() }
            } catch {
                self.database.logger.debug("commit listener ended", metadata: ["error": "\(error)"])
            }
            guard !Task.isCancelled else { return }
            if ContinuousClock.now - started > .seconds(10) { attempt = 0 }
            // The connection ended (a server restart): wake the waiters, whose reads report an
            // outage, and listen again after a pause.
            self.signal.signal()
            try? await Task.sleep(for: .milliseconds(100) * (1 << min(attempt, 5)))
            attempt += 1
        }
    }
}
