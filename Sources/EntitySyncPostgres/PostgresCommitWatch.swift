import EntitySyncCore
import Foundation
import Logging
import Synchronization

/// Wakes waiters when any instance of the group commits a change. After a commit that wrote,
/// the instance announces it (`pg_notify` on a channel named after the store's schema, in a
/// statement of its own, at most one every few milliseconds: a notifying transaction holds a
/// cluster-wide lock through its commit, so applies never notify in their own transaction, and a
/// failed notify never fails an apply). One pooled connection per process listens, from the
/// first wait until the store closes. Whenever it is not listening, waiters fall back to their
/// timeout.
final class PostgresCommitWatch: Sendable {
    private struct State {
        var listener: Task<Void, Never>?
        var announcer: Task<Void, Never>?
        var stopped = false
    }

    private let database: PostgresDatabase
    /// The schema's name, which is a valid identifier of at most 63 bytes.
    let channel: String
    private let signal = WakeSignal()
    private let announcements = WakeSignal()
    private let state = Mutex(State())
    /// Least time between two announcements of one process.
    private let announceInterval = Duration.milliseconds(5)
    /// How often the listening connection is checked: it is out of the pool, so the pool's
    /// keep-alive does not notice a connection that died without a reset.
    private let listenerCheck = Duration.seconds(10)

    init(database: PostgresDatabase) {
        self.database = database
        self.channel = database.schema
    }

    /// Returns after a commit announced since the listener started, or after `timeout`.
    func wait(timeout: Duration) async {
        self.state.withLock { state in
            guard state.listener == nil, !state.stopped else { return }
            state.listener = Task { await self.listen() }
        }
        await self.signal.wait(timeout: timeout)
    }

    /// Tells the other instances (and this one) that a change was committed.
    func announce() {
        self.state.withLock { state in
            guard state.announcer == nil, !state.stopped else { return }
            state.announcer = Task { await self.announceLoop() }
        }
        self.announcements.signal()
    }

    /// Ends the listener and the announcer (the store is closing).
    func stop() {
        self.state.withLock { state in
            state.stopped = true
            state.listener?.cancel()
            state.announcer?.cancel()
        }
    }

    private func announceLoop() async {
        let channel = self.channel
        while !Task.isCancelled {
            await self.announcements.wait(timeout: .seconds(3600))
            guard !Task.isCancelled else { return }
            do {
                try await self.database.read("announce a commit", deadline: .seconds(2)) { sql in
                    try await sql.execute("SELECT pg_notify(\(channel), '')")
                }
            } catch {
                // Waiters elsewhere fall back to their timeout; nothing to retry.
                self.database.logger.debug("could not announce a commit", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: self.announceInterval)
        }
    }

    private func listen() async {
        var attempt = 0
        while !Task.isCancelled {
            let started = ContinuousClock.now
            do {
                // Once listening, commits made before were not announced to this connection:
                // the first signal makes waiters read again.
                try await self.database.listen(self.channel, check: self.listenerCheck) { self.signal.signal() }
            } catch {
                let level: Logger.Level = attempt >= 3 ? .warning : .debug
                self.database.logger.log(level: level, "commit listener ended; listening again",
                                         metadata: ["error": "\(error)", "attempt": "\(attempt + 1)"])
            }
            guard !Task.isCancelled else { return }
            if ContinuousClock.now - started > .seconds(30) { attempt = 0 }
            // The connection ended (a server restart): wake the waiters, whose reads report an
            // outage, and listen again after a pause.
            self.signal.signal()
            try? await Task.sleep(for: .milliseconds(100) * (1 << min(attempt, 5)))
            attempt += 1
        }
    }
}
