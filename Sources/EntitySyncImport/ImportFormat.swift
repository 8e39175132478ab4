import EntitySyncCore
import Foundation

/// The file formats `ctl import` reads.
public enum ImportFormat: String, Sendable, CaseIterable {
    /// One JSON object per line: `{"type":"user","id":…,"name":…,"email":…,"status":…,"attributes":{…}}`
    /// or `{"type":"group","id":…,"name":…,"description":…,"members":[…]}`.
    case jsonl
    /// A header row naming columns among type, id, name, email, status, description, members
    /// (ids separated by `;`), and `attr.<key>` for user attributes.
    case csv

    /// The format a file name implies, if any.
    public init?(path: String) {
        switch (path as NSString).pathExtension.lowercased() {
        case "jsonl", "ndjson", "json": self = .jsonl
        case "csv": self = .csv
        default: return nil
        }
    }
}
