import XCTest
import ThorTensor

/// The kernel-set rule `thor` (and scripts/test.sh) follow, and why a worker refuses another set.
final class BLASCoreTests: XCTestCase {
    func testPreferredCoreTypeIsTheBestSetTheCPUHas() {
        XCTAssertEqual(BLASCore.preferredCoreType(flags: ["sse2", "avx", "avx2", "fma", "avx512f", "avx512bw"]), "SkylakeX")
        XCTAssertEqual(BLASCore.preferredCoreType(flags: ["sse2", "avx", "avx2", "fma"]), "Haswell")
        XCTAssertNil(BLASCore.preferredCoreType(flags: ["sse2", "avx"]))
        XCTAssertNil(BLASCore.preferredCoreType(flags: ["avx2"]), "Haswell's kernels need FMA too")
    }

    func testThisMachinesRuleReadsCPUInfo() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cpuinfo-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n\nprocessor\t: 1\nflags\t\t: fpu\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertEqual(BLASCore.preferredCoreType(cpuinfo: path), "SkylakeX")
        XCTAssertNil(BLASCore.preferredCoreType(cpuinfo: path + ".missing"))
    }

    func testRefusalSaysWhy() throws {
        XCTAssertNil(BLASCore.refusal(requested: "SkylakeX", loaded: "SkylakeX", cpuFlags: ["avx512f"]))
        XCTAssertNil(BLASCore.refusal(requested: "skylakex", loaded: "SkylakeX", cpuFlags: nil), "names compare case-insensitively")
        let lacking = try XCTUnwrap(BLASCore.refusal(requested: "SkylakeX", loaded: "Haswell", cpuFlags: ["avx2", "fma"]))
        XCTAssertTrue(lacking.contains("avx512f") && lacking.contains("lacks") && lacking.contains("OPENBLAS_CORETYPE=Haswell"), lacking)
        let differs = try XCTUnwrap(BLASCore.refusal(requested: "Haswell", loaded: "SkylakeX", cpuFlags: ["avx2", "fma", "avx512f"]))
        XCTAssertTrue(differs.contains("loaded SkylakeX") && differs.contains("OPENBLAS_CORETYPE=Haswell"), differs)
    }

    /// The process loaded a set by the rule (the test runner exports it like scripts/test.sh).
    func testLoadedSetIsNamed() {
        XCTAssertFalse(BLASCore.loaded.isEmpty)
        if let wanted = ProcessInfo.processInfo.environment[BLASCore.environmentVariable], !wanted.isEmpty,
           let flags = BLASCore.cpuFlags(), BLASCore.preferredCoreType(flags: flags) == wanted {
            XCTAssertTrue(BLASCore.same(BLASCore.loaded, wanted), "asked for \(wanted), loaded \(BLASCore.loaded)")
        }
    }
}
