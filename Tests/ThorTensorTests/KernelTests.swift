import XCTest
import ThorTensor

final class KernelTests: XCTestCase {
    private func values(_ n: Int, seed: UInt64) -> [Float] {
        var g = RandomGenerator(seed: seed)
        return (0..<n).map { _ in g.normal() }
    }

    func testElementwiseKernels() {
        let n = 11
        let x = values(n, seed: 1), y0 = values(n, seed: 2)
        var y = y0
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { Kernels.add(xp.baseAddress!, into: $0.baseAddress!, count: n) } }
        for i in 0..<n { XCTAssertEqual(y[i], y0[i] + x[i]) }
        y = y0
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { Kernels.axpy(-0.5, xp.baseAddress!, into: $0.baseAddress!, count: n) } }
        for i in 0..<n { XCTAssertEqual(y[i], y0[i] + -0.5 * x[i]) }
        y = y0
        y.withUnsafeMutableBufferPointer { Kernels.scale($0.baseAddress!, by: 3, count: n) }
        for i in 0..<n { XCTAssertEqual(y[i], 3 * y0[i]) }
        var z = [Float](repeating: 0, count: n)
        x.withUnsafeBufferPointer { xp in z.withUnsafeMutableBufferPointer { Kernels.copy(xp.baseAddress!, to: $0.baseAddress!, count: n) } }
        XCTAssertEqual(z, x)
        z[4] += 0.25
        let diff = x.withUnsafeBufferPointer { a in z.withUnsafeBufferPointer { Kernels.maxAbsDifference(a.baseAddress!, $0.baseAddress!, count: n) } }
        XCTAssertEqual(diff, 0.25, accuracy: 1e-6)
    }

    func testSumOfSquaresIsDoubleAccumulatedAndDeterministic() {
        for n in [1, 3, 4, 7, 1001] {
            let x = values(n, seed: UInt64(n) + 5)
            let s = x.withUnsafeBufferPointer { Kernels.sumOfSquares($0.baseAddress!, count: n) }
            let ref = x.reduce(0.0) { $0 + Double($1) * Double($1) }
            XCTAssertEqual(s, ref, accuracy: 1e-9 * max(1, ref), "n = \(n)")
            let again = x.withUnsafeBufferPointer { Kernels.sumOfSquares($0.baseAddress!, count: n) }
            XCTAssertEqual(s.bitPattern, again.bitPattern, "n = \(n)")
        }
        // Float accumulation would lose the small terms here; Double keeps them.
        var big = [Float](repeating: 1e-4, count: 4096); big[0] = 1e4
        let s = big.withUnsafeBufferPointer { Kernels.sumOfSquares($0.baseAddress!, count: big.count) }
        XCTAssertGreaterThan(s, 1e8 + 3e-5)
        XCTAssertEqual(s, 1e8 + 4095 * Double(Float(1e-4)) * Double(Float(1e-4)), accuracy: 1e-5)
    }

    func testRowAndColumnKernels() {
        let rows = 3, cols = 5
        let m0 = values(rows * cols, seed: 9), bias = values(cols, seed: 10)
        var m = m0
        bias.withUnsafeBufferPointer { b in m.withUnsafeMutableBufferPointer { Kernels.addRowBias(b.baseAddress!, to: $0.baseAddress!, rows: rows, cols: cols) } }
        for r in 0..<rows { for c in 0..<cols { XCTAssertEqual(m[r * cols + c], m0[r * cols + c] + bias[c]) } }
        var out = [Float](repeating: 1, count: cols)
        m0.withUnsafeBufferPointer { a in out.withUnsafeMutableBufferPointer { Kernels.addColumnSums(a.baseAddress!, rows: rows, cols: cols, into: $0.baseAddress!) } }
        for c in 0..<cols {
            var s: Float = 1
            for r in 0..<rows { s += m0[r * cols + c] }
            XCTAssertEqual(out[c], s, accuracy: 1e-5)
        }
    }
}
