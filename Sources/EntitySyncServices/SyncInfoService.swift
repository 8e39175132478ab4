import AMQPClient
import EntitySyncCore
import EntitySyncGRPC
import EntitySyncProto
import GRPCCore
import SwiftProtobuf

/// What a consumer service has applied and how deep its queues are, and read-your-writes:
/// `WaitForVersion` returns once an entity has reached a version here.
struct SyncInfoService: Entitysync_V1_SyncInfo.SimpleServiceProtocol {
    let group: String
    let topology: SyncTopology
    let store: any ReplicaStore
    let connection: AMQPConnection
    /// Applies events and answers `WaitForVersion` callers as it does (`versionWaiters`; other
    /// instances' applies are found through the store's `waitForCommit`).
    let runner: ConsumerRunner

    /// The methods that need the bearer token when one is configured: re-drive changes the
    /// replica, and listing takes dead letters off their queue for a moment and puts them back.
    static let mutations: Set<MethodDescriptor> = [
        Entitysync_V1_SyncInfo.Method.RedriveDeadLetters.descriptor,
        Entitysync_V1_SyncInfo.Method.ListDeadLetters.descriptor,
    ]

    func getSyncStatus(request: Entitysync_V1_GetSyncStatusRequest, context: ServerContext) async throws -> Entitysync_V1_SyncStatus {
        try await RPCErrors.mapping {
            var status = Entitysync_V1_SyncStatus()
            status.consumerGroup = self.group
            let statistics = try await self.store.statistics()
            let record = try await self.store.bootstrapRecord()
            status.bootstrap = switch BootstrapState.assess(record, staleAfter: SnapshotBootstrap.Configuration().staleAfter) {
            case .complete: .complete
            case .queuesOnly: .queuesOnly
            case .inProgress: .inProgress
            case .incomplete: .incomplete
            }
            if let record {
                status.bootstrapStartedAt = Google_Protobuf_Timestamp(date: record.startedAt)
                if let completed = record.completedAt { status.bootstrapCompletedAt = Google_Protobuf_Timestamp(date: completed) }
            }
            for (kind, _) in self.topology.queues(forGroup: self.group) {
                let values = statistics[kind] ?? ReplicaStatistics()
                var entity = Entitysync_V1_EntitySyncStatus()
                entity.entityType = kind.protoType
                entity.entitiesHeld = UInt64(values.entities)
                entity.highestVersion = values.highestVersion
                entity.eventsApplied = UInt64(values.applied)
                entity.eventsStale = UInt64(values.stale)
                entity.eventsDeadLettered = UInt64(values.deadLettered)
                if let last = values.lastAppliedAt { entity.lastAppliedAt = Google_Protobuf_Timestamp(date: last) }
                if let mark = record?.marks[kind], record?.isCompleted == true {
                    entity.snapshotEntities = UInt64(mark.entities)
                    entity.snapshotHighestVersion = mark.highestVersion
                }
                status.entities.append(entity)
            }
            // Queue depths are best effort: with the broker down the store's figures still help.
            for (_, queue) in self.topology.queues(forGroup: self.group) {
                var depth = Entitysync_V1_QueueStatus()
                depth.queue = queue
                if let main = try? await self.connection.queueStatus(queue) {
                    depth.messages = UInt64(main.messageCount)
                    depth.consumers = UInt64(main.consumerCount)
                }
                if let dead = try? await self.connection.queueStatus(SyncTopology.deadLetterQueue(forQueue: queue)) {
                    depth.deadLetterMessages = UInt64(dead.messageCount)
                }
                if let retry = try? await self.connection.queueStatus(SyncTopology.retryQueue(forQueue: queue)) {
                    depth.retryMessages = UInt64(retry.messageCount)
                }
                status.queues.append(depth)
            }
            return status
        }
    }

    func waitForVersion(request: Entitysync_V1_WaitForVersionRequest, context: ServerContext) async throws -> Entitysync_V1_WaitForVersionResponse {
        try await self.waitForVersion(request)
    }

    func waitForVersion(_ request: Entitysync_V1_WaitForVersionRequest) async throws -> Entitysync_V1_WaitForVersionResponse {
        guard let kind = EntityKind(request.entityType) else {
            throw RPCErrors.invalid("entity_type must be ENTITY_TYPE_USER or ENTITY_TYPE_GROUP")
        }
        guard self.topology.queues(forGroup: self.group).contains(where: { $0.kind == kind }) else {
            throw RPCError(code: .failedPrecondition, message: "consumer group '\(self.group)' does not receive \(kind.rawValue) events")
        }
        guard request.version > 0 else { throw RPCErrors.invalid("version must be at least 1") }
        guard request.timeoutMs <= 60_000 else { throw RPCErrors.invalid("timeout_ms must be at most 60000") }
        let timeout = Duration.milliseconds(request.timeoutMs == 0 ? 5000 : Int64(request.timeoutMs))
        return try await RPCErrors.mapping {
            try DraftValidation.validateID(request.entityID, field: "entity_id")
            guard let held = try await self.runner.versionWaiters.wait(kind, request.entityID, version: request.version, timeout: timeout) else {
                throw RPCError(code: .deadlineExceeded, message: "\(kind.rawValue) '\(request.entityID)' has not "
                               + "reached version \(request.version) here within \(timeout)")
            }
            var response = Entitysync_V1_WaitForVersionResponse()
            response.version = held.version
            response.deleted = held.deleted
            return response
        }
    }

    func listDeadLetters(request: Entitysync_V1_ListDeadLettersRequest, context: ServerContext) async throws -> Entitysync_V1_ListDeadLettersResponse {
        let kinds = try self.kinds(request.entityType)
        guard request.limit <= ConsumerRunner.deadLetterListLimit else {
            throw RPCErrors.invalid("limit must be at most \(ConsumerRunner.deadLetterListLimit) (got \(request.limit))")
        }
        return try await RPCErrors.mapping {
            let (letters, total) = try await self.runner.listDeadLetters(kinds: kinds, limit: request.limit == 0 ? 100 : Int(request.limit))
            var response = Entitysync_V1_ListDeadLettersResponse()
            response.deadLetters = letters.map(Self.message)
            response.total = UInt64(total)
            return response
        }
    }

    func redriveDeadLetters(request: Entitysync_V1_RedriveDeadLettersRequest, context: ServerContext) async throws -> Entitysync_V1_RedriveDeadLettersResponse {
        let kinds = try self.kinds(request.entityType)
        return try await RPCErrors.mapping {
            let report = try await self.runner.redriveDeadLetters(kinds: kinds, limit: request.limit == 0 ? nil : Int(request.limit))
            var response = Entitysync_V1_RedriveDeadLettersResponse()
            response.applied = UInt64(report.applied)
            response.stale = UInt64(report.stale)
            response.failed = UInt64(report.failed)
            response.failures = report.failures.map(Self.message)
            return response
        }
    }

    /// The entity types a dead-letter call covers: the one asked for, or all this group consumes.
    private func kinds(_ type: Entitysync_V1_EntityType) throws -> Set<EntityKind> {
        let consumed = Set(self.topology.queues(forGroup: self.group).map(\.kind))
        guard type != .unspecified else { return consumed }
        guard let kind = EntityKind(type) else {
            throw RPCErrors.invalid("entity_type must be ENTITY_TYPE_USER, ENTITY_TYPE_GROUP or unspecified (both)")
        }
        guard consumed.contains(kind) else {
            throw RPCError(code: .failedPrecondition, message: "consumer group '\(self.group)' does not receive \(kind.rawValue) events")
        }
        return [kind]
    }

    private static func message(_ info: DeadLetterInfo) -> Entitysync_V1_DeadLetter {
        var letter = Entitysync_V1_DeadLetter()
        letter.queue = info.queue
        letter.entityType = info.kind.protoType
        letter.entityID = info.entityID ?? ""
        letter.version = info.version ?? 0
        letter.messageID = info.messageID ?? ""
        letter.reason = info.reason
        letter.contentType = info.contentType ?? ""
        letter.sizeBytes = UInt64(info.size)
        return letter
    }
}
