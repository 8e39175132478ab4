import ArgumentParser

/// Which service a ctl command reads from.
enum ReadTarget: String, ExpressibleByArgument, CaseIterable {
    case producer
    case userRPC = "user-rpc"
    case orgRPC = "org-rpc"
}
