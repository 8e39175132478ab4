import EntitySyncCore
import Foundation

/// A row of an import file: what it holds, or why it cannot be imported.
public struct ImportRow: Sendable, Equatable {
    /// 1-based line of the row's start in the file.
    public var line: Int
    public var record: Result<ImportRecord, ImportRowError>
}
