import Foundation
import XCTest
import ThorCheckpoint
import ThorTensor

final class SafeTensorsTests: XCTestCase {
    /// Written by Python `safetensors.numpy.save` (safetensors 0.x) with metadata
    /// {"step": "7", "config": "{\"d\": 8}"}: a F32 [2,3], b.bias I64 [2], h F16 [3].
    static let pythonFile = hex("""
    e0000000000000007b225f5f6d657461646174615f5f223a7b22636f6e666967223a227b5c22645c223a20387d222c2273746570223a2237227d2c22622e62696173223a7b226474797065223a22493634222c227368617065223a5b325d2c22646174615f6f666673657473223a5b302c31365d7d2c2261223a7b226474797065223a22463332222c227368617065223a5b322c335d2c22646174615f6f666673657473223a5b31362c34305d7d2c2268223a7b226474797065223a22463136222c227368617065223a5b335d2c22646174615f6f666673657473223a5b34302c34365d7d7d2020010000000000000002000000000000000000c03f000000c000005040000000006f12833a0000e0c0003800bcff7b
    """)

    static func hex(_ s: String) -> [UInt8] {
        let c = Array(s.utf8.filter { $0 != 10 && $0 != 32 })
        return stride(from: 0, to: c.count, by: 2).map { UInt8(String(decoding: c[$0..<($0 + 2)], as: UTF8.self), radix: 16)! }
    }

    func testReadsFileWrittenByPython() throws {
        let f = try SafeTensorsFile.parse(Self.pythonFile)
        XCTAssertEqual(f.metadata, ["step": "7", "config": "{\"d\": 8}"])
        XCTAssertEqual(f.names, ["a", "b.bias", "h"])
        XCTAssertEqual(try f.tensor("a", shape: [2, 3]).array, [1.5, -2, 3.25, 0, 1e-3, -7])
        XCTAssertEqual(try f.entries["b.bias"]!.integers(), [1, 2])
        XCTAssertEqual(f.entries["h"]!.floats(), [0.5, -1, 65504])
        XCTAssertThrowsError(try f.tensor("a", shape: [3, 2])) { e in XCTAssertTrue("\(e)".contains("expected [3, 2]")) }
        XCTAssertThrowsError(try f.load("b.bias", into: Tensor(shape: [2]))) { e in XCTAssertTrue("\(e)".contains("dtype I64")) }
        XCTAssertThrowsError(try f.tensor("missing"))
    }

    func testWriteReadRoundTripIsBitExactAndDeterministic() throws {
        let a = Tensor(shape: [3, 4], values: (0..<12).map { Float($0) * 0.37 - 1 })
        a[5] = .nan; a[6] = -0.0; a[7] = .infinity; a[8] = .leastNonzeroMagnitude
        let b = Tensor(shape: [0, 5])
        let c = Tensor(shape: [], values: [42])
        let file = SafeTensorsFile(tensors: ["layer.0.w": a, "empty": b, "scalar": c],
                                   metadata: ["config": "{\"d\":8,\n\"name\":\"ü\"}", "step": "12"])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("thor-st-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("m.safetensors").path
        try file.write(to: path)
        let back = try SafeTensorsFile.read(path: path)
        XCTAssertEqual(back.metadata, file.metadata)
        XCTAssertTrue(try back.tensor("layer.0.w").bitwiseEqual(a))
        XCTAssertEqual(try back.tensor("empty").shape, [0, 5])
        XCTAssertEqual(try back.tensor("scalar").array, [42])
        let dest = Tensor(shape: [3, 4])
        try back.load("layer.0.w", into: dest)
        XCTAssertTrue(dest.bitwiseEqual(a))
        let bytes = file.serialized()
        XCTAssertEqual(bytes, SafeTensorsFile(tensors: ["scalar": c, "empty": b, "layer.0.w": a], metadata: file.metadata).serialized())
        let headerLength = Int(bytes[0]) | Int(bytes[1]) << 8
        XCTAssertEqual(headerLength % 8, 0)
        XCTAssertEqual(bytes.count, 8 + headerLength + 13 * 4)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["m.safetensors"], "no temporary file left")
    }

    func testCorruptFilesGiveClearErrors() throws {
        func fails(_ bytes: [UInt8], _ reason: String, line: UInt = #line) {
            XCTAssertThrowsError(try SafeTensorsFile.parse(bytes), line: line) { e in
                XCTAssertTrue("\(e)".contains(reason), "\(e)", line: line)
            }
        }
        func make(_ header: String, data: Int) -> [UInt8] {
            var h = Array(header.utf8)
            while h.count % 8 != 0 { h.append(32) }
            var out = (0..<8).map { UInt8((h.count >> (8 * $0)) & 0xFF) }
            out += h
            out += [UInt8](repeating: 0, count: data)
            return out
        }
        let good = Self.pythonFile
        fails(Array(good.prefix(5)), "truncated")
        fails(Array(good.prefix(100)), "truncated")
        fails(Array(good.dropLast(3)), "truncated file?")
        fails(good + [0, 0], "trailing bytes")
        fails([0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0] + [UInt8](repeating: 32, count: 16), "absurd")
        fails(make("{not json", data: 0), "not valid JSON")
        fails(make("[1,2]", data: 0), "not a JSON object")
        fails(make(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, data: 8), "out of range")
        fails(make(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}"#, data: 12), "needs 8 bytes")
        fails(make(#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#, data: 8), "unsupported dtype 'Q4'")
        fails(make(#"{"a":{"dtype":"I64","shape":[4000000000000000,1000],"data_offsets":[0,8]}}"#, data: 8), "overflows")
        fails(make(#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, data: 8), "invalid shape")
        fails(make(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, data: 12), "overlaps")
        fails(make(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: 8), "gap")
        fails(make(#"{"__metadata__":{"k":3}}"#, data: 0), "not a string")
        XCTAssertThrowsError(try SafeTensorsFile.read(path: "/nonexistent/x.safetensors")) { e in
            XCTAssertTrue("\(e)".contains("/nonexistent/x.safetensors"))
        }
    }
}
