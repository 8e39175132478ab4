/// A failed call, printed as "Error: …" with exit status 1.
struct CtlError: Error, CustomStringConvertible {
    var description: String
}
