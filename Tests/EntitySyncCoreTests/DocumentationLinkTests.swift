import Foundation
import Testing

/// The repository documents itself: its Markdown files may link only to files inside it, and
/// every relative link must point to a file that exists (and to a heading that exists).
@Suite struct DocumentationLinkTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().standardizedFileURL

    /// README.md, the other top-level Markdown files, and docs/*.md.
    static var documents: [URL] {
        let manager = FileManager.default
        let topLevel = (try? manager.contentsOfDirectory(atPath: self.root.path)) ?? []
        let docs = (try? manager.contentsOfDirectory(atPath: self.root.appendingPathComponent("docs").path)) ?? []
        return topLevel.filter { $0.hasSuffix(".md") }.map { self.root.appendingPathComponent($0) }
            + docs.filter { $0.hasSuffix(".md") }.map { self.root.appendingPathComponent("docs").appendingPathComponent($0) }
    }

    /// The text outside fenced code blocks, where Markdown links live.
    static func prose(_ text: String) -> String {
        var inFence = false
        var lines: [Substring] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.trimmingCharacters(in: .whitespaces).hasPrefix("```") {
                inFence.toggle()
                continue
            }
            if !inFence { lines.append(line) }
        }
        return lines.joined(separator: "\n")
    }

    /// Targets of inline links `[text](target)` and reference definitions `[label]: target`.
    static func links(in text: String) -> [String] {
        let prose = self.prose(text)
        var targets: [String] = []
        let inline = /\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/
        for match in prose.matches(of: inline) { targets.append(String(match.output.1)) }
        let reference = /(?m)^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s|$)/
        for match in prose.matches(of: reference) { targets.append(String(match.output.1)) }
        return targets
    }

    /// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens.
    static func anchors(in text: String) -> Set<String> {
        var anchors: Set<String> = []
        for line in self.prose(text).split(separator: "\n") where line.hasPrefix("#") {
            let title = line.drop { $0 == "#" }.trimmingCharacters(in: .whitespaces).lowercased()
            let kept = title.filter { $0.isLetter || $0.isNumber || $0 == " " || $0 == "-" || $0 == "_" }
            anchors.insert(kept.replacingOccurrences(of: " ", with: "-"))
        }
        return anchors
    }

    @Test func theDocumentsAreFound() {
        let names = Set(Self.documents.map { $0.path.replacingOccurrences(of: Self.root.path + "/", with: "") })
        #expect(names.contains("README.md"))
        #expect(names.contains("docs/ARCHITECTURE.md"))
    }

    @Test func linksStayInsideTheRepositoryAndResolve() throws {
        var problems: [String] = []
        for document in Self.documents {
            let text = try String(contentsOf: document, encoding: .utf8)
            let name = document.path.replacingOccurrences(of: Self.root.path + "/", with: "")
            if text.contains("../shared") { problems.append("\(name) mentions ../shared, which a clone does not have") }
            for target in Self.links(in: text) {
                let lowered = target.lowercased()
                if lowered.hasPrefix("http://") || lowered.hasPrefix("https://") || lowered.hasPrefix("mailto:") { continue }
                let parts = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)
                let path = String(parts[0]).removingPercentEncoding ?? String(parts[0])
                let anchor = parts.count > 1 ? String(parts[1]) : nil
                guard !path.hasPrefix("/") else {
                    problems.append("\(name) links to the absolute path \(target)")
                    continue
                }
                let resolved = path.isEmpty ? document
                    : document.deletingLastPathComponent().appendingPathComponent(path).standardizedFileURL
                guard resolved.path == Self.root.path || resolved.path.hasPrefix(Self.root.path + "/") else {
                    problems.append("\(name) links to \(target), outside the repository")
                    continue
                }
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: resolved.path, isDirectory: &isDirectory) else {
                    problems.append("\(name) links to \(target), which does not exist")
                    continue
                }
                if let anchor, !anchor.isEmpty, resolved.pathExtension == "md", !isDirectory.boolValue {
                    let targetText = try String(contentsOf: resolved, encoding: .utf8)
                    if !Self.anchors(in: targetText).contains(anchor.lowercased()) {
                        problems.append("\(name) links to \(target), but that file has no such heading")
                    }
                }
            }
        }
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    @Test func theLinkParserFindsInlineAndReferenceLinks() {
        let text = """
            See [the design](docs/ARCHITECTURE.md#the-version-rule) and [`x`](../shared/DESIGN.md "t").
            ```
            [not a link](nowhere.md)
            ```
            [ref]: RELIABILITY.md
            """
        #expect(Self.links(in: text) == ["docs/ARCHITECTURE.md#the-version-rule", "../shared/DESIGN.md", "RELIABILITY.md"])
        #expect(Self.anchors(in: "## The version rule\n### Several producers on one store") ==
                ["the-version-rule", "several-producers-on-one-store"])
    }
}
