import EntitySyncTestSupport
import Foundation
import Testing

/// Runs scripts/proto-hash (sha256sum over proto/), so it lives with the tests that start processes.
@Suite struct GeneratedCodeTests {
    /// The committed generated code must come from the committed proto/ files.
    @Test func generatedCodeMatchesProto() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let recorded = try String(contentsOf: root.appendingPathComponent("Sources/EntitySyncProto/Generated/proto.sha256"),
                                  encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let completion = try ChildProcess.run(root.appendingPathComponent("scripts/proto-hash").path, [])
        #expect(completion.succeeded, "scripts/proto-hash failed: \(completion.output)")
        let current = completion.output.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(current == recorded, "proto/ changed since the Swift code was generated: run scripts/generate-proto")
    }
}
