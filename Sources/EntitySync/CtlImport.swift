import ArgumentParser
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncImport
import EntitySyncProto
import EntitySyncServices
import Foundation
import GRPCCore
import HTTP2RPC

struct Import: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Load users and groups from a JSON Lines or CSV file through the producer's admin API.",
        discussion: """
            JSON Lines: one object per line, {"type":"user","id":"u1","name":"Ann","email":"ann@example.com",\
            "status":"active","attributes":{"team":"a"}} or {"type":"group","id":"g1","name":"Ops",\
            "description":"…","members":["u1"]}. Blank lines and lines starting with # are skipped.

            CSV: a header row naming columns among type,id,name,email,status,description,members \
            (member ids separated by ;) and attr.<key> for user attributes.

            Users are loaded before groups, so a group may name members defined later in the file. An \
            entity that exists already is updated to the row's state. Rejected rows are listed with \
            their line and reason at the end; the exit status is then 1.
            """)
    @OptionGroup var options: CtlOptions
    @Argument(help: "The file to load (.jsonl or .csv; '-' reads standard input with --format).") var file: String
    @Option(help: "jsonl or csv (default: from the file name).") var format: String?
    @Option(help: "Requests in flight at once.") var concurrency: Int = 16

    func run() async throws {
        guard (1...256).contains(self.concurrency) else { throw ValidationError("--concurrency must be from 1 to 256") }
        let callDeadline = try self.options.callDeadline
        let format = try self.resolvedFormat()
        let text: String
        do {
            let data = self.file == "-" ? FileHandle.standardInput.readDataToEndOfFile()
                                        : try Data(contentsOf: URL(fileURLWithPath: self.file))
            text = String(decoding: data, as: UTF8.self)
        } catch {
            throw CtlError(description: "cannot read \(self.file): \(error.localizedDescription)")
        }
        let rows = ImportFile.parse(text, format: format)
        var rejected = rows.compactMap { row -> Rejection? in
            guard case .failure(let error) = row.record else { return nil }
            return Rejection(line: row.line, id: "", reason: error.description)
        }
        let records = rows.compactMap { row -> (Int, ImportRecord)? in
            guard case .success(let record) = row.record else { return nil }
            return (row.line, record)
        }
        let users = records.filter { if case .user = $0.1 { true } else { false } }
        let groups = records.filter { if case .group = $0.1 { true } else { false } }
        let progress = ImportProgress(total: rows.count, alreadyDone: rejected.count)
        let producer = try self.options.producerAddress
        let metadata = self.options.metadata
        var counts = (created: 0, updated: 0)
        let client = try RPCClient(host: producer.host, port: producer.port,
                                   tls: try self.options.tls.map { try $0.clientConfiguration() },
                                   callTimeout: callDeadline)
        do {
            let admin = NativeAdminCalls(client: client)
            for batch in [users, groups] {
                try await withThrowingTaskGroup(of: Outcome.self) { group in
                    var next = batch.makeIterator()
                    func submit() -> Bool {
                        guard let (line, record) = next.next() else { return false }
                        group.addTask { await Self.load(record, line: line, admin: admin, metadata: metadata) }
                        return true
                    }
                    for _ in 0..<self.concurrency where !submit() { break }
                    while let outcome = try await group.next() {
                        switch outcome {
                        case .created: counts.created += 1
                        case .updated: counts.updated += 1
                        case .rejected(let rejection): rejected.append(rejection)
                        case .fatal(let message):
                            group.cancelAll()
                            progress.finish()
                            throw CtlError(description: "\(producer) refused the import: \(message)")
                        }
                        progress.advance()
                        _ = submit()
                    }
                }
            }
        } catch {
            await client.close()
            throw error
        }
        await client.close()
        progress.finish()
        rejected.sort { $0.line < $1.line }
        self.report(rows: rows.count, created: counts.created, updated: counts.updated, rejected: rejected,
                    seconds: progress.elapsed)
        if !rejected.isEmpty { throw ExitCode(1) }
    }

    private func resolvedFormat() throws -> ImportFormat {
        if let format = self.format {
            guard let parsed = ImportFormat(rawValue: format.lowercased()) else {
                throw ValidationError("--format must be jsonl or csv, not '\(format)'")
            }
            return parsed
        }
        guard let inferred = ImportFormat(path: self.file) else {
            throw ValidationError("cannot tell the format of '\(self.file)' from its name: use --format jsonl or --format csv")
        }
        return inferred
    }

    private func report(rows: Int, created: Int, updated: Int, rejected: [Rejection], seconds: Double) {
        let rate = seconds > 0 ? Double(created + updated) / seconds : 0
        if self.options.json {
            let summary: [String: Any] = [
                "rows": rows, "created": created, "updated": updated, "rejected": rejected.count,
                "seconds": (seconds * 100).rounded() / 100, "rowsPerSecond": rate.rounded(),
                "rejections": rejected.map { ["line": $0.line, "id": $0.id, "reason": $0.reason] as [String: Any] },
            ]
            if let data = try? JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys]) {
                print(String(decoding: data, as: UTF8.self))
            }
            return
        }
        print("imported \(self.file): \(rows) rows, \(created) created, \(updated) updated, \(rejected.count) rejected "
              + "in \(String(format: "%.1f", seconds)) s (\(Int(rate)) rows/s)")
        guard !rejected.isEmpty else { return }
        let shown = rejected.prefix(50)
        print("\nrejected rows:")
        print(Table.render(header: ["line", "id", "reason"], rows: shown.map { ["\($0.line)", $0.id, $0.reason] }))
        if rejected.count > shown.count { print("… and \(rejected.count - shown.count) more (use --json for all)") }
    }

    struct Rejection: Sendable {
        var line: Int
        var id: String
        var reason: String
    }

    enum Outcome: Sendable {
        case created, updated
        case rejected(Rejection)
        /// A failure every further row would meet too (bad token, producer gone).
        case fatal(String)
    }

    /// Creates the entity, or updates it if it exists; retries a few times while the producer is unavailable.
    static func load(_ record: ImportRecord, line: Int, admin: any AdminCalls,
                     metadata: Metadata) async -> Outcome {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await self.upsert(record, admin: admin, metadata: metadata)
            } catch let error as RPCError {
                let retryable: Set<RPCError.Code> = [.unavailable, .resourceExhausted, .deadlineExceeded]
                if error.code == .unauthenticated || error.code == .permissionDenied {
                    return .fatal("\(error.code): \(error.message)")
                } else if retryable.contains(error.code) && attempt < 5 {
                    try? await Task.sleep(for: .milliseconds(200 * (1 << attempt)))
                } else if error.code == .unavailable || error.code == .deadlineExceeded {
                    // A producer gone or stuck fails every further row the same way: stop, not crawl.
                    return .fatal("\(error.code): \(error.message)")
                } else {
                    return .rejected(Rejection(line: line, id: record.id, reason: "\(error.code): \(error.message)"))
                }
            } catch {
                return .rejected(Rejection(line: line, id: record.id, reason: "\(error)"))
            }
        }
    }

    private static func upsert(_ record: ImportRecord, admin: any AdminCalls, metadata: Metadata) async throws -> Outcome {
        let created = switch record {
        case .user(let user): try await Upsert.user(user, admin: admin, metadata: metadata).created
        case .group(let group): try await Upsert.group(group, admin: admin, metadata: metadata).created
        }
        return created ? .created : .updated
    }
}
