import XCTest
import ThorTensor
import ThorExperts

/// The ReLU passes of `FeedForward` run eight lanes at a time: they must give exactly the
/// scalar rule's bits (`v > 0 ? v : 0`), including NaN, ±0 and the tail of a row that is not
/// a multiple of eight.
final class ActivationKernelTests: XCTestCase {
    /// Values with the awkward cases sprinkled in.
    func values(_ n: Int, seed: UInt64) -> [Float] {
        var g = RandomGenerator(seed: seed)
        var v = [Float](repeating: 0, count: n)
        v.withUnsafeMutableBufferPointer { g.fillNormal($0.baseAddress!, count: n, std: 1) }
        for i in stride(from: 3, to: n, by: 17) { v[i] = -0.0 }
        for i in stride(from: 5, to: n, by: 23) { v[i] = 0 }
        for i in stride(from: 7, to: n, by: 29) { v[i] = .nan }
        for i in stride(from: 11, to: n, by: 31) { v[i] = -.infinity }
        return v
    }

    func testReLUBackwardMatchesTheScalarRuleBitForBit() {
        for (rows, dFF) in [(3, 37), (5, 64), (2, 7)] {
            let n = rows * dFF
            let h = values(n, seed: 1), da = values(n, seed: 2)
            var dh = [Float](repeating: 42, count: n)
            h.withUnsafeBufferPointer { hp in
                da.withUnsafeBufferPointer { dp in
                    dh.withUnsafeMutableBufferPointer { out in
                        FeedForward.activationBackward(dh: out.baseAddress!, da: dp.baseAddress!, h: hp.baseAddress!,
                                                       rows: rows, dFF: dFF, activation: .relu)
                    }
                }
            }
            for i in 0..<n {
                let expected: Float = h[i] > 0 ? da[i] : 0
                XCTAssertEqual(dh[i].bitPattern, expected.bitPattern, "rows \(rows) dFF \(dFF) element \(i): h \(h[i]) da \(da[i])")
            }
        }
    }

    func testReLUForwardAddsTheBiasThenClampsBitForBit() {
        let n = 5, d = 3, f = 37
        let x = Tensor(shape: [n, d], values: values(n * d, seed: 3).map { $0.isNaN ? 1 : $0 == -.infinity ? -2 : $0 })
        let w1 = Tensor(shape: [d, f], values: values(d * f, seed: 4).map { $0.isFinite ? $0 : 0.5 })
        let b1 = Tensor(shape: [f], values: values(f, seed: 5).map { $0.isFinite ? $0 : -0.0 })
        let w2 = Tensor(shape: [f, d], values: values(f * d, seed: 6).map { $0.isFinite ? $0 : 0.25 })
        let b2 = Tensor(shape: [d], values: [0.1, -0.2, 0.3])
        let h = Tensor(shape: [n, f]), a = Tensor(shape: [n, f]), y = Tensor(shape: [n, d])
        FeedForward.forward(y: y.pointer, h: h.pointer, a: a.pointer, x: x.pointer, w1: w1.pointer, b1: b1.pointer,
                            w2: w2.pointer, b2: b2.pointer, n: n, d: d, dFF: f, activation: .relu)
        // The scalar rule on the same product.
        let ref = Tensor(shape: [n, f])
        gemm(m: n, n: f, k: d, a: x.pointer, b: w1.pointer, c: ref.pointer)
        for r in 0..<n {
            for j in 0..<f {
                let v = ref[r * f + j] + b1[j]
                XCTAssertEqual(h[r * f + j].bitPattern, v.bitPattern, "h[\(r), \(j)]")
                XCTAssertEqual(a[r * f + j].bitPattern, (v > 0 ? v : 0).bitPattern, "a[\(r), \(j)]")
            }
        }
    }
}
