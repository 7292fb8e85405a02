// swift-tools-version:6.0
// thor: THOR-MoE translation models trained across expert-worker processes.
// Module layering (one way):
//   ThorTensor -> ThorExperts -> ThorModel -> ThorWire/ThorTransport -> ThorCluster -> ThorTraining -> ThorCLI -> thor
// (tensors -> experts -> model -> wire/transport -> cluster -> training -> CLI).
// ThorExperts (expert types, the FFN kernel, expert hosts and backends) is all a worker needs:
// ThorWire and ThorCluster depend on it, not on ThorModel.
// ThorData and ThorCheckpoint sit beside (text, corpora, batches, BLEU; safetensors files).
import PackageDescription

let optimize: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
]

let package = Package(
    name: "thor",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "thor", targets: ["thor"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // SHA-256 of checkpoint files and built corpora.
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // System libraries (Debian: libopenblas-dev, libzmq3-dev, libprotobuf-c-dev).
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        // libzmq's pkg-config output carries -isystem flags SwiftPM rejects: link through the module map.
        .systemLibrary(name: "CZMQ", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CProtobufC", providers: [.apt(["libprotobuf-c-dev"])]),
        // SQLite, for the Bible database of `thor data build` (Debian: libsqlite3-dev).
        .systemLibrary(name: "CSQLite", providers: [.apt(["libsqlite3-dev"])]),
        // protobuf-c code generated from Protos/ by scripts/gen-protos.sh (committed).
        .target(name: "CThorProto", dependencies: ["CProtobufC"],
                cSettings: [.unsafeFlags(["-O2"])],
                linkerSettings: [.linkedLibrary("protobuf-c")]),

        // Elementwise C kernels Swift does not vectorize (Adam's square root, glibc's expf bit for bit,
        // a row maximum, dropout draws): -O3, vector sqrt, no implicit fused multiply-add (expf's
        // fma calls are explicit), so the same bits as the plain Swift loops they replace.
        .target(name: "CThorKernels",
                cSettings: [.unsafeFlags(["-O3", "-fno-math-errno", "-ffp-contract=off"])]),

        .target(name: "ThorTensor", dependencies: ["CBLAS", "CThorKernels"], swiftSettings: optimize),
        .target(name: "ThorExperts", dependencies: ["ThorTensor"], swiftSettings: optimize),
        .target(name: "ThorModel", dependencies: ["ThorTensor", "ThorExperts", "CThorKernels"], swiftSettings: optimize),
        .target(name: "ThorData", dependencies: ["ThorTensor", "CSQLite", .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: optimize),
        .target(name: "ThorCheckpoint", dependencies: ["ThorTensor", .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: optimize),
        .target(name: "ThorWire", dependencies: ["ThorTensor", "ThorExperts", "CThorProto", "CThorKernels"], swiftSettings: optimize),
        .target(name: "ThorTransport", dependencies: ["CZMQ"], swiftSettings: optimize),
        .target(name: "ThorCluster",
                dependencies: ["ThorTensor", "ThorExperts", "ThorWire", "ThorTransport", "ThorCheckpoint"],
                swiftSettings: optimize),
        // Training loop, checkpoints of a whole run, evaluation: glues model, data and cluster.
        .target(name: "ThorTraining",
                dependencies: ["ThorTensor", "ThorExperts", "ThorModel", "ThorData", "ThorCheckpoint", "ThorCluster",
                               .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: optimize),
        .target(name: "ThorCLI",
                dependencies: ["ThorTensor", "ThorExperts", "ThorModel", "ThorData", "ThorCheckpoint", "ThorWire",
                               "ThorTransport", "ThorCluster", "ThorTraining",
                               .product(name: "ArgumentParser", package: "swift-argument-parser")],
                swiftSettings: optimize),
        .executableTarget(name: "thor", dependencies: ["ThorCLI"], swiftSettings: optimize),

        .testTarget(name: "ThorTensorTests", dependencies: ["ThorTensor"]),
        .testTarget(name: "ThorExpertsTests", dependencies: ["ThorTensor", "ThorExperts"]),
        .testTarget(name: "ThorModelTests", dependencies: ["ThorTensor", "ThorExperts", "ThorModel"]),
        .testTarget(name: "ThorDataTests", dependencies: ["ThorData", "ThorTensor"]),
        .testTarget(name: "ThorCheckpointTests", dependencies: ["ThorCheckpoint", "ThorTensor"]),
        .testTarget(name: "ThorWireTests", dependencies: ["ThorWire", "ThorTransport", "ThorTensor", "ThorExperts"]),
        .testTarget(name: "ThorTransportTests", dependencies: ["ThorTransport"]),
        .testTarget(name: "ThorClusterTests", dependencies: ["ThorCluster", "ThorExperts", "ThorTensor", "ThorWire", "ThorTransport"]),
        .testTarget(name: "ThorTrainingTests", dependencies: ["ThorTraining", "ThorExperts", "ThorModel", "ThorData", "ThorTensor", "ThorCluster", "ThorCheckpoint"]),
        .testTarget(name: "ThorCLITests", dependencies: ["ThorCLI"]),
    ]
)
