/// A failure of the sync core or a store, with a code a service maps to its own status
/// (for example a gRPC status) and a message that says what was wrong and what to do.
public struct SyncError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: String, Hashable, Sendable {
            case invalidArgument, notFound, alreadyExists, versionMismatch, storeUnavailable, storeRejected, brokerUnavailable,
                 configuration
        }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// A field of the request is invalid; the message names it.
        public static let invalidArgument = Code(.invalidArgument)
        public static let notFound = Code(.notFound)
        public static let alreadyExists = Code(.alreadyExists)
        /// An expected version did not match the stored one (optimistic concurrency).
        public static let versionMismatch = Code(.versionMismatch)
        /// The store could not be read or written (busy, I/O error); retrying may succeed.
        public static let storeUnavailable = Code(.storeUnavailable)
        /// The broker could not be reached or dropped the connection; retrying may succeed.
        /// The store answered but refused the operation in a way retrying will not change (a
        /// constraint, a value out of range, a schema that is not this build's).
        public static let storeRejected = Code(.storeRejected)
        public static let brokerUnavailable = Code(.brokerUnavailable)
        public static let configuration = Code(.configuration)

        public var description: String { self.wrapped.rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "SyncError.\(self.code): \(self.message)" }
}
