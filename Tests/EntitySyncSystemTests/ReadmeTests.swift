import EntitySyncTestSupport
import Foundation
import Testing

/// The README's promises, followed literally: its run command and demo line, and the container
/// files it describes.
@Suite(.serialized) struct ReadmeTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The one-line command in the first sh block after `<!-- readme-test: NAME -->` in README.md.
    static func command(_ name: String) throws -> String {
        let readme = try String(contentsOf: self.root.appendingPathComponent("README.md"), encoding: .utf8)
        guard let marker = readme.range(of: "<!-- readme-test: \(name) -->"),
              let open = readme.range(of: "```sh\n", range: marker.upperBound..<readme.endIndex),
              let close = readme.range(of: "\n```", range: open.upperBound..<readme.endIndex) else {
            throw HarnessError("README.md has no sh block after <!-- readme-test: \(name) -->")
        }
        let command = String(readme[open.upperBound..<close.lowerBound])
        guard !command.contains("\n") else { throw HarnessError("the README's \(name) command must be one line: \(command)") }
        return command
    }

    /// A base port with the five service ports and their metrics ports free.
    static func freeBasePort() throws -> Int {
        for _ in 0..<50 {
            let base = Int.random(in: 20_000...28_000)
            if (0..<5).allSatisfy({ portIsFree(base + $0) && portIsFree(base + 1000 + $0) }) { return base }
        }
        throw HarnessError("no free range of ports for the run command")
    }

    /// The run command in the background, its output in a file.
    final class Run: Sendable {
        let process: ChildProcess
        let output: String

        init(_ command: String, environment: [String: String], output: String) throws {
            self.output = output
            self.process = try ChildProcess("/bin/bash", ["-c", command], environment: environment,
                                            directory: ReadmeTests.root.path, log: output)
        }

        var text: String { (try? String(contentsOfFile: self.output, encoding: .utf8)) ?? "" }

        func waitUntilServing() async throws {
            try await eventually("the run command reports every service SERVING", timeout: .seconds(240)) {
                if !self.process.isRunning { throw HarnessError("the run command exited early:\n\(self.text)") }
                return self.text.contains("all services SERVING")
            }
        }

        /// Ctrl-C, then waits for the command to finish; returns its exit code (-1 if a signal ended it).
        func interrupt() async throws -> Int32 {
            self.process.signal(SIGINT)
            try await self.process.waitForExit("the run command exits after SIGINT", timeout: .seconds(90))
            return self.process.exitCode ?? -1
        }
    }

    /// Runs `command` with bash in the repository's root to completion; returns its exit code
    /// (-1 if a signal ended it) and combined output.
    static func shell(_ command: String, environment: [String: String]) throws -> (Int32, String) {
        let completion = try ChildProcess.run("/bin/bash", ["-c", command], environment: environment, directory: self.root.path)
        return (completion.exitCode ?? -1, completion.output)
    }

    @Test func runCommandServesTheDemoStopsOnCtrlCAndResumesItsData() async throws {
        let runCommand = try Self.command("run")
        let demoCommand = try Self.command("demo")
        let data = FileManager.default.temporaryDirectory.appendingPathComponent("entitysync-readme-\(UUID().uuidString)").path
        let base = try Self.freeBasePort()
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ENTITY_SYNC_") }
        environment["ENTITY_SYNC_DATA"] = data
        environment["ENTITY_SYNC_BASE_PORT"] = "\(base)"
        // The test run already holds SwiftPM's build lock; use the binary it built.
        environment["ENTITY_SYNC_BINARY"] = entitySyncBinary
        var client = environment
        client["ENTITY_SYNC_PRODUCER"] = "127.0.0.1:\(base)"
        client["ENTITY_SYNC_USER_RPC"] = "127.0.0.1:\(base + 1)"
        client["ENTITY_SYNC_ORG_RPC"] = "127.0.0.1:\(base + 2)"
        defer {
            // Whatever happened, leave nothing running.
            if let pids = try? String(contentsOfFile: "\(data)/run.pids", encoding: .utf8) {
                for pid in pids.split(separator: " ").compactMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
                    kill(pid, SIGKILL)
                }
            }
            _ = try? Self.shell("scripts/rabbitmq-private stop '\(data)/broker'", environment: environment)
            try? FileManager.default.removeItem(atPath: data)
        }

        let first = try Run(runCommand, environment: environment, output: "\(data).first.log")
        defer { if first.process.isRunning { first.process.signal(SIGTERM) } }
        try await first.waitUntilServing()
        #expect(first.text.contains("127.0.0.1:\(base + 3)") && first.text.contains("127.0.0.1:\(base + 4)"),
                "it must print where every instance listens:\n\(first.text)")

        let (demoStatus, demo) = try Self.shell(demoCommand, environment: client)
        #expect(demoStatus == 0, "the demo failed:\n\(demo)")
        #expect(demo.contains("==> 7/7"))
        #expect(demo.contains("alice,bob,carol"), "org-rpc must show carol added to engineering:\n\(demo)")
        #expect(demo.contains("consumer_user_rpc") && demo.contains("consumer_org_rpc"))

        try await Self.checkCtlCommands(client: client, data: data)

        let firstStatus = try await first.interrupt()
        #expect(firstStatus == 0, "the run command must exit cleanly on Ctrl-C:\n\(first.text)")
        for name in ["producer", "user-rpc-1", "user-rpc-2", "org-rpc-1", "org-rpc-2"] {
            #expect(first.text.contains("    \(name) stopped"), "\(name) did not stop cleanly:\n\(first.text)")
        }
        #expect(first.text.contains("stopping the private broker"))
        #expect(!FileManager.default.fileExists(atPath: "\(data)/run.pids"))
        #expect(!FileManager.default.fileExists(atPath: "\(data)/broker/server.pid"), "the broker must be stopped")
        #expect((0..<5).allSatisfy { portIsFree(base + $0) }, "a service still holds its port")

        // Again: the same data comes back, from the broker and the stores.
        let second = try Run(runCommand, environment: environment, output: "\(data).second.log")
        defer { if second.process.isRunning { second.process.signal(SIGTERM) } }
        try await second.waitUntilServing()
        let (getStatus, alice) = try Self.shell("'\(entitySyncBinary)' ctl group get engineering --json", environment: client)
        #expect(getStatus == 0, "\(alice)")
        #expect(alice.contains("\"carol\""), "the second run lost the first run's data:\n\(alice)")
        let secondStatus = try await second.interrupt()
        #expect(secondStatus == 0, "\(second.text)")

        // --clean starts afresh: the demo's entities are gone.
        let third = try Run(runCommand + " --clean", environment: environment, output: "\(data).third.log")
        defer { if third.process.isRunning { third.process.signal(SIGTERM) } }
        try await third.waitUntilServing()
        let (cleanStatus, clean) = try Self.shell("'\(entitySyncBinary)' ctl group get engineering --from producer", environment: client)
        #expect(cleanStatus != 0 && clean.contains("notFound"), "--clean kept the old data:\n\(clean)")
        let thirdStatus = try await third.interrupt()
        #expect(thirdStatus == 0, "\(third.text)")
        try? FileManager.default.removeItem(atPath: "\(data).third.log")
        try? FileManager.default.removeItem(atPath: "\(data).first.log")
        try? FileManager.default.removeItem(atPath: "\(data).second.log")
    }

    @Test func composeFileAndDockerfileAreValidAndCoverTheBinary() throws {
        // Debian's python3 has the YAML module docker-compose itself uses.
        let python = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : "python3"
        let script = Self.root.appendingPathComponent("Tests/python/container_files_check.py").path
        let (status, output) = try Self.shell("'\(python)' '\(script)' '\(Self.root.path)' '\(entitySyncBinary)'",
                                              environment: ProcessInfo.processInfo.environment)
        #expect(status == 0, "\(output)")
        #expect(output.contains("container files: ok"))
    }

    /// The ctl commands a person uses next to the demo, through the built binary.
    static func checkCtlCommands(client: [String: String], data: String) async throws {
        let ctl = "'\(entitySyncBinary)' ctl"
        let (healthStatus, health) = try self.shell("\(ctl) health", environment: client)
        #expect(healthStatus == 0 && health.components(separatedBy: "SERVING").count == 4, "\(health)")

        let file = "\(data)/people.jsonl"
        try """
            {"type":"user","id":"imp-1","name":"Imported One","email":"one@example.com"}
            {"type":"user","id":"imp-2","name":"Imported Two","email":"not-an-email"}
            {"type":"group","id":"imp-g","name":"Imported","members":["imp-1"]}
            {"broken
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let (importStatus, imported) = try self.shell("\(ctl) import '\(file)'", environment: client)
        #expect(importStatus == 1, "rejected rows must make the exit status 1:\n\(imported)")
        #expect(imported.contains("4 rows, 2 created, 0 updated, 2 rejected"), "\(imported)")
        #expect(imported.contains("rows/s") && imported.contains("[#"), "progress and rate:\n\(imported)")
        #expect(imported.contains("not-an-email") && imported.contains("not valid JSON"), "\(imported)")
        let (againStatus, again) = try self.shell("\(ctl) import '\(file)' --json", environment: client)
        #expect(againStatus == 1 && again.contains("\"updated\":2"), "a second import updates:\n\(again)")
        let (waitStatus, waited) = try self.shell("\(ctl) wait --type group --id imp-g --version 2 --service org-rpc", environment: client)
        #expect(waitStatus == 0, "\(waited)")

        let (statusStatus, status) = try self.shell("\(ctl) status", environment: client)
        #expect(statusStatus == 0 && status.contains("lag") && status.contains("in the outbox"), "\(status)")

        // --watch redraws until interrupted.
        let watch = try Run("exec \(ctl) status --watch --interval 0.3", environment: client, output: "\(data)/watch.log")
        try await eventually("two frames of status --watch") { watch.text.components(separatedBy: "ctl status --watch").count >= 3 }
        watch.process.signal(SIGTERM)
        try await watch.process.waitForExit("status --watch stops", timeout: .seconds(30))

        // The convergence check reads the stores the run command keeps in its data folder.
        let (checkStatus, check) = try self.shell("'\(entitySyncBinary)' check --producer-db '\(data)/producer.sqlite' "
            + "--group 'user-rpc=\(data)/user-rpc.sqlite' --group 'org-rpc=\(data)/org-rpc.sqlite' --wait 20", environment: client)
        #expect(checkStatus == 0 && check.contains("converged") && !check.contains("NOT"), "\(check)")

        let (dlqStatus, dlq) = try self.shell("\(ctl) dlq list", environment: client)
        #expect(dlqStatus == 0 && dlq.contains("user-rpc at") && dlq.contains("0 dead-lettered"), "\(dlq)")
        let (redriveStatus, redrive) = try self.shell("\(ctl) dlq redrive --service org-rpc", environment: client)
        #expect(redriveStatus == 0 && redrive.contains("0 applied, 0 skipped as stale, 0 failed again"), "\(redrive)")
    }
}
