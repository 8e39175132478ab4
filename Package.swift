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
        .executable(name: "amqp-publish-bench", targets: ["AMQPPublishBench"]),
        .executable(name: "amqp-publish-bench-c", targets: ["AMQPPublishBenchC"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
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
    ]
)
