extension SnapshotBootstrap {
    /// Where a snapshot comes from: the producer's name for logs, its snapshot stream, and which
    /// of the stream's errors may go away if asked again.
    public struct Producer: Sendable {
        public var name: String
        public var stream: SnapshotStream
        public var isTransient: @Sendable (any Error) -> Bool

        public init(name: String, stream: @escaping SnapshotStream, isTransient: @escaping @Sendable (any Error) -> Bool) {
            self.name = name
            self.stream = stream
            self.isTransient = isTransient
        }
    }

    /// What a consumer group does before it consumes: a store whose queues lack part of the
    /// history (the group was added later, or its store rebuilt) loads the producer's snapshot
    /// (versions make the overlap with the queues harmless); a load cut short is loaded again on
    /// the next start. Returns the load's report, or nil when no load was due or no producer was
    /// given, each case logged with what to do about it.
    public func loadIfNeeded(from producer: Producer?) async throws -> Report? {
        let assessment = try await self.assess()
        guard assessment.needsSnapshot else {
            if assessment.state == .queuesOnly {
                self.logger.info("store was filled from the group's queues alone; no snapshot to load")
            }
            return nil
        }
        guard let producer else {
            switch assessment.state {
            case .inProgress:
                self.logger.info("another instance is loading the producer's snapshot into the shared store")
            case .incomplete:
                self.logger.warning("""
                    the store's snapshot load never completed and no --producer was given; entities may be missing: \
                    restart an instance with --producer to finish it
                    """, metadata: ["bootstrap.started_by": "\(assessment.record?.startedBy ?? "")"])
            case .queuesOnly, .complete:
                self.logger.warning("""
                    store is empty and no --producer was given; serving only what the group's queues bring. Right if \
                    they hold the group's whole history; a rebuilt store or a group added later needs --producer
                    """)
            }
            return nil
        }
        return try await self.load(from: producer.name, producer.stream, isTransient: producer.isTransient)
    }
}
