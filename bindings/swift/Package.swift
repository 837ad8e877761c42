// swift-tools-version:5.7
// The Swift binding of libdpoimg. Install the library first (scripts/install.sh PREFIX) and make
// pkg-config find it (PKG_CONFIG_PATH=PREFIX/lib/pkgconfig); no unsafeFlags are used, so the
// package works as a versioned dependency.
import PackageDescription

let package = Package(
    name: "Dpoimg",
    platforms: [.macOS(.v12), .iOS(.v15)],
    products: [
        .library(name: "Dpoimg", targets: ["Dpoimg"]),
    ],
    targets: [
        // The C library, found through pkg-config (dpoimg.pc).
        .systemLibrary(
            name: "CDpoimg",
            path: "Sources/CDpoimg",
            pkgConfig: "dpoimg"
        ),
        .target(name: "Dpoimg", dependencies: ["CDpoimg"]),
        .testTarget(name: "DpoimgTests", dependencies: ["Dpoimg"]),
    ]
)
