import Foundation
import XCTest
import ThorTensor
import ThorExperts

// Helpers of the value tests: expected values are worked out in Double with plain loops
// from SPEC's formulas, never by calling the code under test.

/// Row-major `[rows][cols]` → a Tensor of that shape.
func tensor(_ rows: [[Double]]) -> Tensor {
    Tensor(shape: [rows.count, rows[0].count], values: rows.flatMap { $0.map(Float.init) })
}

/// Writes `rows` (row-major) into a parameter or tensor of matching shape.
func fill(_ t: Tensor, _ rows: [[Double]]) {
    let flat = rows.flatMap { $0 }
    precondition(flat.count == t.count, "fill: \(flat.count) values for \(t.shape)")
    for (i, v) in flat.enumerated() { t[i] = Float(v) }
}

/// `x · W` for a row vector `x` [k] and `W` [k][n].
func rowTimes(_ x: [Double], _ w: [[Double]]) -> [Double] {
    (0..<w[0].count).map { j in (0..<x.count).reduce(0.0) { $0 + x[$1] * w[$1][j] } }
}

func softmax(_ z: [Double]) -> [Double] {
    let m = z.max()!
    let e = z.map { Foundation.exp($0 - m) }
    let s = e.reduce(0, +)
    return e.map { $0 / s }
}

func sigmoid(_ x: Double) -> Double { 1 / (1 + Foundation.exp(-x)) }

/// Asserts `got[i] ≈ want[i]` for every i, naming `what` and the index.
func assertValues(_ got: Tensor, _ want: [Double], accuracy: Double = 1e-5, _ what: String,
                  file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(got.count, want.count, "\(what): \(got.count) values, expected \(want.count)", file: file, line: line)
    for i in 0..<min(got.count, want.count) {
        XCTAssertEqual(Double(got[i]), want[i], accuracy: accuracy, "\(what)[\(i)]", file: file, line: line)
    }
}
