import XCTest
import ThorTensor
import ThorModel

/// The max-pool row kernel of the task level runs eight lanes at a time: it must pick exactly
/// what the scalar rule picks (first row wins ties, NaN never replaces, rows not yet pooled
/// take any value), whatever the row width.
final class RoutingKernelTests: XCTestCase {
    func testMaxPoolRowMatchesTheScalarRule() {
        for d in [1, 8, 13, 37] {
            let rows = 9
            var g = RandomGenerator(seed: UInt64(d))
            var x = [Float](repeating: 0, count: rows * d)
            x.withUnsafeMutableBufferPointer { g.fillNormal($0.baseAddress!, count: rows * d, std: 1) }
            for i in stride(from: 2, to: x.count, by: 7) { x[i] = x[max(0, i - d)] }   // ties with an earlier row
            for i in stride(from: 4, to: x.count, by: 19) { x[i] = .nan }
            for i in stride(from: 6, to: x.count, by: 11) { x[i] = -0.0 }
            var u = [Float](repeating: 0, count: d), best = [Int32](repeating: -1, count: d)
            var refU = u, refBest = best
            x.withUnsafeBufferPointer { xp in
                for r in 0..<rows {
                    u.withUnsafeMutableBufferPointer { up in
                        best.withUnsafeMutableBufferPointer { bp in
                            RoutingKernels.maxPoolRow(xp.baseAddress! + r * d, row: Int32(r), into: up.baseAddress!,
                                                      rows: bp.baseAddress!, count: d)
                        }
                    }
                    for j in 0..<d where refBest[j] < 0 || x[r * d + j] > refU[j] { refU[j] = x[r * d + j]; refBest[j] = Int32(r) }
                }
            }
            XCTAssertEqual(best, refBest, "d = \(d)")
            XCTAssertEqual(u.map(\.bitPattern), refU.map(\.bitPattern), "d = \(d)")
        }
    }
}
