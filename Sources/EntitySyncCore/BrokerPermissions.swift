import AMQPModel

/// The three regexes of `rabbitmqctl set_permissions`.
public struct BrokerPermissions: Sendable, Equatable {
    public var configure: String
    public var write: String
    public var read: String

    /// The rabbitmqctl line granting these to `user` on `vhost`.
    public func command(user: String, vhost: String) -> String {
        "rabbitmqctl set_permissions -p '\(vhost)' '\(user)' '\(self.configure)' '\(self.write)' '\(self.read)'"
    }
}
