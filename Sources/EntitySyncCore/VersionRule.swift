/// The rule that makes redelivery, duplicates and reordering harmless: an event is applied only
/// if its version is newer than what the replica holds (a tombstone holds its version too).
public enum VersionRule {
    public enum Decision: Sendable, Equatable {
        case apply
        /// Already applied, or older than what is held: acknowledge and count, do not apply.
        case stale
    }

    public static func decide(incoming: UInt64, stored: UInt64?) -> Decision {
        guard let stored else { return .apply }
        return incoming > stored ? .apply : .stale
    }
}
