import EntitySyncCore
import Foundation

/// Why a row was rejected, in words a person can act on.
public struct ImportRowError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
