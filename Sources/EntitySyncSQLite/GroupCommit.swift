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
    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let value = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<any Sendable, any Error>) in
            let start = self.state.withLock { state -> Bool in
                state.pending.append(Job(body: body, continuation: continuation))
                guard !state.draining else { return false }
                state.draining = true
                return true
            }
            // Unstructured: a caller that gives up must not cancel the others' commit.
            if start { Task { await self.drain() } }
        }
        guard let result = value as? T else {
            throw SyncError(.storeUnavailable, "a grouped write returned \(type(of: value)), not \(T.self)")
        }
        return result
    }

    private func drain() async {
        while true {
            let jobs = self.state.withLock { state -> [Job] in
                guard !state.pending.isEmpty else {
                    state.draining = false
                    return []
                }
                let count = min(self.limit, state.pending.count)
                defer { state.pending.removeFirst(count) }
                return Array(state.pending.prefix(count))
            }
            guard !jobs.isEmpty else { return }
            let outcomes: [Result<any Sendable, any Error>]
            do {
                outcomes = try await self.pool.write { db in try Self.run(jobs, in: db) }
            } catch {
                // The transaction did not commit: none of its writes happened.
                outcomes = jobs.map { _ in .failure(error) }
            }
            for (job, outcome) in zip(jobs, outcomes) { job.continuation.resume(with: outcome) }
        }
    }

    /// Runs each job in a savepoint inside the group's transaction.
    private static func run(_ jobs: [Job], in db: Database) throws -> [Result<any Sendable, any Error>] {
        var outcomes: [Result<any Sendable, any Error>] = []
        outcomes.reserveCapacity(jobs.count)
        for job in jobs {
            var value: (any Sendable)?
            do {
                try db.inSavepoint {
                    value = try job.body(db)
                    return .commit
                }
                outcomes.append(.success(value ?? ()))
            } catch {
                // Some SQLite errors (a full disk, an I/O error) roll back the whole
                // transaction; the writes that succeeded before it are gone too, and the rest
                // would run outside any transaction. Fail the group instead.
                guard db.isInsideTransaction else { throw error }
                outcomes.append(.failure(error))
            }
        }
        return outcomes
    }
}
