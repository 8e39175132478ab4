import EntitySyncCore
import GRDB
import Synchronization

/// Commits concurrent writes together: every write submitted while a transaction is being
/// committed joins the next one, so one commit (and one fsync) covers many callers. Each write
/// runs in a savepoint of its own, so one that throws (a version mismatch, a missing user) is
/// rolled back alone and fails alone; the others commit. Each caller is answered only after
/// the commit that holds its write, or with the error that failed it.
final class GroupCommit: Sendable {
    private struct Job: Sendable {
        let body: @Sendable (Database) throws -> any Sendable
        let continuation: CheckedContinuation<any Sendable, any Error>
    }

    private struct State {
        var pending: [Job] = []
        var draining = false

        /// The oldest `count` pending jobs at most, taken out of the queue.
        mutating func take(_ count: Int) -> [Job] {
            let count = min(count, self.pending.count)
            defer { self.pending.removeFirst(count) }
            return Array(self.pending.prefix(count))
        }
    }

    private let state = Mutex(State())
    private let pool: DatabasePool
    /// Writes per transaction at most, so that one commit stays short.
    private let limit: Int

    init(pool: DatabasePool, limit: Int = 256) {
        self.pool = pool
        self.limit = limit
    }

    /// Runs `body` in the next group's transaction and returns its result once that committed.
    /// A caller that finds no group committing leads one itself, in its own task: at low rates
    /// each write would otherwise start a task of its own, and every task start wakes a thread.
    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let lead = self.state.withLock { state -> Bool in
            guard !state.draining else { return false }
            state.draining = true
            return true
        }
        let value: any Sendable
        if lead {
            value = try await self.lead(body)
        } else {
            value = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<any Sendable, any Error>) in
                let start = self.state.withLock { state -> Bool in
                    state.pending.append(Job(body: body, continuation: continuation))
                    guard !state.draining else { return false }
                    state.draining = true
                    return true
                }
                // The group that was committing finished meanwhile. Unstructured: a caller that
                // gives up must not cancel the others' commit.
                if start { Task { await self.drain() } }
            }
        }
        guard let result = value as? T else {
            throw SyncError(.storeUnavailable, "a grouped write returned \(type(of: value)), not \(T.self)")
        }
        return result
    }

    /// Commits `body` first in a group with whatever is pending, then hands what came in
    /// meanwhile to a drain task.
    private func lead(_ body: @escaping @Sendable (Database) throws -> any Sendable) async throws -> any Sendable {
        let others = self.state.withLock { $0.take(self.limit - 1) }
        let outcomes = await self.commit([body] + others.map(\.body))
        for (job, outcome) in zip(others, outcomes.dropFirst()) { job.continuation.resume(with: outcome) }
        let more = self.state.withLock { state -> Bool in
            guard state.pending.isEmpty else { return true }
            state.draining = false
            return false
        }
        if more { Task { await self.drain() } }
        return try outcomes[0].get()
    }

    private func drain() async {
        while true {
            let jobs = self.state.withLock { state -> [Job] in
                if state.pending.isEmpty { state.draining = false }
                return state.take(self.limit)
            }
            guard !jobs.isEmpty else { return }
            let outcomes = await self.commit(jobs.map(\.body))
            for (job, outcome) in zip(jobs, outcomes) { job.continuation.resume(with: outcome) }
        }
    }

    /// One transaction for `bodies`, each in a savepoint; their outcomes in order. Not
    /// cancellable: the leader's caller giving up must not fail the others' writes (GRDB's async
    /// `write` refuses to start in a cancelled task), so it goes through the callback API.
    private func commit(_ bodies: [@Sendable (Database) throws -> any Sendable]) async -> [Result<any Sendable, any Error>] {
        await withCheckedContinuation { (done: CheckedContinuation<[Result<any Sendable, any Error>], Never>) in
            self.pool.asyncWrite({ db in try Self.run(bodies, in: db) }) { _, result in
                switch result {
                case .success(let outcomes):
                    done.resume(returning: outcomes)
                case .failure(let error):
                    // The transaction did not commit: none of its writes happened.
                    done.resume(returning: bodies.map { _ in .failure(error) })
                }
            }
        }
    }

    /// Runs each body in a savepoint inside the group's transaction. The savepoint statements
    /// are prepared once: GRDB's `inSavepoint` parsed and prepared `SAVEPOINT` and `RELEASE` for
    /// every write, about a tenth of the producer's CPU under a bulk import.
    private static func run(_ bodies: [@Sendable (Database) throws -> any Sendable], in db: Database) throws
        -> [Result<any Sendable, any Error>] {
        let savepoint = try db.cachedStatement(sql: "SAVEPOINT grouped_write")
        let release = try db.cachedStatement(sql: "RELEASE SAVEPOINT grouped_write")
        let rollback = try db.cachedStatement(sql: "ROLLBACK TO SAVEPOINT grouped_write")
        var outcomes: [Result<any Sendable, any Error>] = []
        outcomes.reserveCapacity(bodies.count)
        for body in bodies {
            try savepoint.execute()
            do {
                let value = try body(db)
                try release.execute()
                outcomes.append(.success(value))
            } catch {
                // Some SQLite errors (a full disk, an I/O error) roll back the whole
                // transaction; the writes that succeeded before it are gone too, and the rest
                // would run outside any transaction. Fail the group instead.
                guard db.isInsideTransaction else { throw error }
                // ROLLBACK TO keeps the savepoint open; RELEASE ends it.
                try rollback.execute()
                try release.execute()
                outcomes.append(.failure(error))
            }
        }
        return outcomes
    }
}
