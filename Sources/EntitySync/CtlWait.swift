import ArgumentParser
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import EntitySyncServices
import Foundation
import GRPCCore
import SwiftProtobuf

struct Wait: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "wait", abstract: "Wait until user-rpc or org-rpc has applied an entity's version.")
    @OptionGroup var options: CtlOptions
    @Option(help: "user or group.") var type: String
    @Option var id: String
    @Option var version: UInt64
    @Option(help: "Which service to ask: user-rpc or org-rpc.") var service: ReadTarget = .userRPC
    @Option(help: "Milliseconds to wait at most.") var timeoutMs: UInt32 = 5000

    func run() async throws {
        var request = Entitysync_V1_WaitForVersionRequest()
        guard let kind = ["user": Entitysync_V1_EntityType.user, "group": .group][self.type] else {
            throw ValidationError("--type must be user or group")
        }
        request.entityType = kind
        request.entityID = self.id
        request.version = self.version
        request.timeoutMs = self.timeoutMs
        let address = self.service == .orgRPC ? try self.options.orgRPCAddress : try self.options.userRPCAddress
        let sent = request
        // The service waits 5 s when asked for 0.
        let waits = Duration.milliseconds(Int64(self.timeoutMs == 0 ? 5000 : self.timeoutMs))
        let response = try await self.options.withClient(address, waits: waits) { client in
            try await Entitysync_V1_SyncInfo.Client(wrapping: client).waitForVersion(sent)
        }
        try self.options.print(response) { "\(self.type) \(self.id) is at version \(response.version) on \(address)" }
    }
}
