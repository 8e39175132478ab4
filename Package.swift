// swift-tools-version:6.1
import PackageDescription

// One list for every target so the whole package builds under the same rules.
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "EntitySync",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "AMQPClient", targets: ["AMQPClient"]),
        .library(name: "EntitySyncCore", targets: ["EntitySyncCore"]),
        .library(name: "EntitySyncSQLite", targets: ["EntitySyncSQLite"]),
        .library(name: "EntitySyncPostgres", targets: ["EntitySyncPostgres"]),
        .executable(name: "entity-sync", targets: ["EntitySync"]),
        .executable(name: "amqp-publish-bench", targets: ["AMQPPublishBench"]),
        .executable(name: "amqp-publish-bench-c", targets: ["AMQPPublishBenchC"]),
        .executable(name: "amqp-drain-bench-c", targets: ["AMQPDrainBenchC"]),
        .executable(name: "ingest-latency", targets: ["IngestLatency"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        // librabbitmq from the system (Debian: librabbitmq-dev), plus a header-only shim.
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        // AMQP's vocabulary (field tables, properties, declarations, deliveries, errors) and the
        // broker protocol the sync core is written against: values only, no I/O.
        .target(
            name: "AMQPModel",
            swiftSettings: swiftSettings
        ),
        // RabbitMQ's queueing rules in memory: the broker the sync core's tests run against.
        .target(
            name: "AMQPTesting",
            dependencies: ["AMQPModel"],
            swiftSettings: swiftSettings
        ),
        // The only Swift code that touches librabbitmq.
        .target(
            name: "AMQPClient",
            dependencies: [
                "AMQPModel",
                "CRabbitMQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: swiftSettings
        ),
        // libnghttp2 from the system (Debian: libnghttp2-dev).
        .systemLibrary(
            name: "CNghttp2",
            pkgConfig: "libnghttp2",
            providers: [.apt(["libnghttp2-dev"])]
        ),
        // The gRPC server on libnghttp2: connections, streams, routing, deadlines, TLS. The only
        // Swift code that touches libnghttp2; it knows nothing about entities.
        .target(
            name: "HTTP2RPC",
            dependencies: [
                "CNghttp2",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Code generated from proto/ by scripts/generate-proto; committed, never edited by hand.
        .target(
            name: "EntitySyncProto",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["Generated/proto.sha256"],
            swiftSettings: swiftSettings
        ),
        // Entities, versions, topology, envelope, outbox relay and consumer runner.
        .target(
            name: "EntitySyncCore",
            dependencies: [
                "AMQPModel",
                "EntitySyncProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The process-wide SQLite settings that need sqlite3_config, which is variadic (C only).
        .target(
            name: "CSQLiteTuning",
            linkerSettings: [.linkedLibrary("sqlite3")]
        ),
        // The SQLite (GRDB) stores: the producer's source of truth and a consumer group's replica.
        .target(
            name: "EntitySyncSQLite",
            dependencies: [
                "CSQLiteTuning",
                "EntitySyncCore",
                "EntitySyncProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRDB", package: "GRDB.swift"),
                // SQLite's C API, for the point reads the gRPC server makes on its event loop.
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ],
            swiftSettings: swiftSettings
        ),
        // The PostgreSQL (postgres-nio) stores, for producers and groups whose instances span hosts.
        .target(
            name: "EntitySyncPostgres",
            dependencies: [
                "EntitySyncCore",
                "EntitySyncProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                // Only to recognise the pool's "circuit breaker tripped" error.
                .product(name: "_ConnectionPoolModule", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // gRPC stubs generated from proto/ (services and the standard health service).
        .target(
            name: "EntitySyncGRPC",
            dependencies: [
                "EntitySyncProto",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ],
            swiftSettings: swiftSettings
        ),
        // The gRPC services and the wiring of each process kind (producer, user-rpc, org-rpc).
        .target(
            name: "EntitySyncServices",
            dependencies: [
                "AMQPClient",
                "EntitySyncCore",
                "EntitySyncSQLite",
                "EntitySyncPostgres",
                "EntitySyncGRPC",
                "EntitySyncProto",
                "HTTP2RPC",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Reading users and groups from JSON Lines and CSV files for `entity-sync ctl import`.
        .target(
            name: "EntitySyncImport",
            dependencies: ["EntitySyncCore"],
            swiftSettings: swiftSettings
        ),
        // The `entity-sync` command: argument parsing and nothing else.
        .executableTarget(
            name: "EntitySync",
            dependencies: [
                "EntitySyncServices",
                "EntitySyncCore",
                "EntitySyncSQLite",
                "EntitySyncImport",
                "EntitySyncGRPC",
                "EntitySyncProto",
                "AMQPClient",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "AMQPPublishBench",
            dependencies: ["AMQPClient"],
            path: "Benchmarks/AMQPPublishBench",
            swiftSettings: swiftSettings
        ),
        // The plain C baseline the Swift publisher is measured against.
        .executableTarget(
            name: "AMQPPublishBenchC",
            dependencies: ["CRabbitMQ"],
            path: "Benchmarks/AMQPPublishBenchC"
        ),
        // The plain C queue drain that catch-up is measured against.
        .executableTarget(
            name: "AMQPDrainBenchC",
            dependencies: ["CRabbitMQ"],
            path: "Benchmarks/AMQPDrainBenchC"
        ),
        // The reply-to-visible latency client of `scripts/bench ingest`.
        .executableTarget(
            name: "IngestLatency",
            dependencies: [
                "HTTP2RPC", "EntitySyncProto", "EntitySyncGRPC",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
            ],
            path: "Benchmarks/IngestLatency",
            swiftSettings: swiftSettings
        ),
        // Tests by cost (docs/TESTING.md). Unit: no broker, no processes (`scripts/test --unit`).
        .testTarget(
            name: "AMQPClientTests",
            dependencies: ["AMQPClient"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HTTP2RPCTests",
            dependencies: ["HTTP2RPC"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EntitySyncImportTests",
            dependencies: ["EntitySyncImport", "EntitySyncCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EntitySyncCoreTests",
            dependencies: ["AMQPModel", "AMQPTesting", "EntitySyncCore", "EntitySyncSQLite", "EntitySyncTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EntitySyncServicesTests",
            dependencies: ["EntitySyncServices", "EntitySyncCore", "AMQPClient"],
            swiftSettings: swiftSettings
        ),
        // The store contract, one suite over every backend: SQLite always, PostgreSQL when
        // scripts/test started one (ENTITY_SYNC_TEST_POSTGRES_URL).
        .testTarget(
            name: "EntitySyncStoreTests",
            dependencies: ["EntitySyncCore", "EntitySyncSQLite", "EntitySyncPostgres", "EntitySyncProto", "EntitySyncTestSupport",
                           .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: swiftSettings
        ),
        // What more than one test target needs, once: the process spawner, the test broker and
        // its vhosts, fixtures, waiting, free ports.
        .target(
            name: "EntitySyncTestSupport",
            dependencies: [
                "AMQPClient", "EntitySyncCore", "EntitySyncSQLite", "EntitySyncPostgres",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/EntitySyncTestSupport",
            swiftSettings: swiftSettings
        ),
        // Broker integration: a RabbitMQ broker, rabbitmqctl for some.
        .testTarget(
            name: "AMQPClientIntegrationTests",
            dependencies: ["AMQPClient", "EntitySyncTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EntitySyncIntegrationTests",
            dependencies: ["EntitySyncCore", "EntitySyncSQLite", "AMQPClient", "EntitySyncTestSupport"],
            swiftSettings: swiftSettings
        ),
        // System: the services over real gRPC, the built binary as processes, h2load, the chaos scenarios.
        .testTarget(
            name: "EntitySyncSystemTests",
            dependencies: [
                "EntitySyncServices",
                "EntitySyncTestSupport",
                "EntitySyncGRPC",
                "EntitySyncProto",
                "EntitySyncCore",
                "EntitySyncSQLite",
                "EntitySyncPostgres",
                "AMQPClient",
                "HTTP2RPC",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
