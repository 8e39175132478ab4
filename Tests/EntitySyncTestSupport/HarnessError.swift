/// The one error the test helpers and tests throw for a failure of their own making (a timeout,
/// a command that failed, an unexpected output), with a message that says what went wrong.
public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
