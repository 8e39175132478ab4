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
        .executable(name: "amqp-publish-bench", targets: ["AMQPPublishBench"]),
        .executable(name: "amqp-publish-bench-c", targets: ["AMQPPublishBenchC"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
    ],
    targets: [
        // librabbitmq from the system (Debian: librabbitmq-dev), plus a header-only shim.
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        // The only Swift code that touches librabbitmq.
        .target(
            name: "AMQPClient",
            dependencies: [
                "CRabbitMQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
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
                "AMQPClient",
                "EntitySyncProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The SQLite (GRDB) stores: the producer's source of truth and a consumer group's replica.
        .target(
            name: "EntitySyncSQLite",
            dependencies: [
                "EntitySyncCore",
                "EntitySyncProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRDB", package: "GRDB.swift"),
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
        .testTarget(
            name: "AMQPClientTests",
            dependencies: ["AMQPClient"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AMQPClientIntegrationTests",
            dependencies: ["AMQPClient"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EntitySyncCoreTests",
            dependencies: ["EntitySyncCore", "EntitySyncSQLite"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EntitySyncIntegrationTests",
            dependencies: ["EntitySyncCore", "EntitySyncSQLite", "AMQPClient"],
            swiftSettings: swiftSettings
        ),
    ]
)
