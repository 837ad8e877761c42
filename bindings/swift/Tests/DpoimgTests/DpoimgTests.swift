import XCTest
@testable import Dpoimg

final class DpoimgTests: XCTestCase {
    /// tests/assets/tiny-bundle of the dpoimg checkout this package sits in.
    static let assets = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().appendingPathComponent("../../../../tests/assets").standardized

    func engine() throws -> Engine {
        try Engine(bundle: Self.assets.appendingPathComponent("tiny-bundle").path,
                   device: "cpu", threads: 1, verify: false)
    }

    func testGenerateIsDeterministic() async throws {
        let e = try engine()
        var o = GenerateOptions(prompt: "a red circle")
        o.seed = 7
        o.steps = 3
        let a = try await e.generate(o)
        let b = try await e.generate(o)
        XCTAssertEqual(a.count, 1)
        XCTAssertEqual(try a.image(at: 0).pixels, try b.image(at: 0).pixels)
        XCTAssertEqual(try a.image(at: 0).width, 16)
        XCTAssertTrue(try a.png(at: 0).starts(with: [0x89, 0x50, 0x4e, 0x47]))
    }

    func testTaskCancellationStopsGeneration() async throws {
        let e = try engine()
        var o = GenerateOptions(prompt: "cancel")
        o.steps = 50
        let task = Task { try await e.generate(o) { p in
            if case .denoising = p.stage, p.step == 1 { Thread.sleep(forTimeInterval: 0.2) }
            return true
        } }
        try await Task.sleep(nanoseconds: 50_000_000)
        task.cancel()
        do {
            _ = try await task.value
            XCTFail("generation was not cancelled")
        } catch is CancellationError {
        }
    }

    func testErrors() throws {
        XCTAssertThrowsError(try Engine(bundle: "/nonexistent")) { error in
            XCTAssertEqual((error as? DpoimgError)?.status, DPOIMG_ERR_BUNDLE)
        }
        let e = try engine()
        XCTAssertThrowsError(try e.unloadAdapter(name: "missing")) { error in
            XCTAssertEqual((error as? DpoimgError)?.status, DPOIMG_ERR_NOT_FOUND)
        }
    }

    func testAdapters() async throws {
        let e = try engine()
        let a = try e.loadAdapter(path: Self.assets.appendingPathComponent("adapters/r4.safetensors").path)
        XCTAssertEqual(a.name, "r4")
        XCTAssertEqual(try e.adapterNames(), ["r4"])
        var o = GenerateOptions(prompt: "lora")
        o.steps = 2
        o.adapters = [.adapter(a, strength: 0.8)]
        let byHandle = try await e.generate(o).image(at: 0).pixels
        o.adapters = [.named("r4", strength: 0.8)]
        let byName = try await e.generate(o).image(at: 0).pixels
        XCTAssertEqual(byHandle, byName)
    }
}
