import Foundation

/// Writing to standard output and error without crashing when the reader has gone away.
enum Terminal {
    /// Writes `text`; false when the other end is closed (a pipe into `head`, say).
    @discardableResult
    static func write(_ text: String, to handle: FileHandle = .standardOutput) -> Bool {
        (try? handle.write(contentsOf: Data(text.utf8))) != nil
    }

    static var outputIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }
    static var errorIsTerminal: Bool { isatty(STDERR_FILENO) == 1 }
}
