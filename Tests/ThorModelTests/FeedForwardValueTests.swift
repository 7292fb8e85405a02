import Foundation
import XCTest
import ThorTensor
import ThorExperts
import ThorModel

/// Values of the FFN / expert `W2 · act(W1 · x + b1) + b2` (SPEC §1) for each activation on a
/// hand-made case; SwiGLU: `W1: d → 2·d_ff` split into gate (first half) and up (second half),
/// `W2 · (silu(gate) ⊙ up) + b2` (SPEC §2, fine print).
final class FeedForwardValueTests: XCTestCase {
    let d = 2, dFF = 2
    let x: [[Double]] = [[1.0, -0.5], [0.25, 2.0], [-1.5, 0.75]]
    /// [d, 2·dFF] for SwiGLU (columns 0..<dFF gate, dFF..<2dFF up); relu/gelu use columns 0..<dFF.
    let w1: [[Double]] = [[0.5, -1.0, 1.5, 0.25],
                          [1.0, 0.75, -0.5, 2.0]]
    let b1: [Double] = [0.1, -0.2, 0.3, -0.4]
    let w2: [[Double]] = [[1.0, -0.5],
                          [0.25, 2.0]]
    let b2: [Double] = [0.05, -0.15]

    func gelu(_ v: Double) -> Double { 0.5 * v * (1 + Foundation.erf(v / 2.0.squareRoot())) }
    func silu(_ v: Double) -> Double { v * sigmoid(v) }

    /// The FFN by hand; `swapHalves` computes `silu(up) ⊙ gate` instead (a wrong split).
    func expected(_ act: Activation, swapHalves: Bool = false) -> [Double] {
        var y: [Double] = []
        for row in x {
            let f1 = act == .swiglu ? 2 * dFF : dFF
            let pre = (0..<f1).map { j in b1[j] + (0..<d).reduce(0.0) { $0 + row[$1] * w1[$1][j] } }
            let a: [Double] = (0..<dFF).map { j in
                switch act {
                case .relu: return max(pre[j], 0)
                case .gelu: return gelu(pre[j])
                case .swiglu: return swapHalves ? silu(pre[dFF + j]) * pre[j] : silu(pre[j]) * pre[dFF + j]
                }
            }
            y += (0..<d).map { k in b2[k] + (0..<dFF).reduce(0.0) { $0 + a[$1] * w2[$1][k] } }
        }
        return y
    }

    /// The kernel with `w1` holding the first `f1` columns of the hand matrix.
    func kernel(_ act: Activation) -> Tensor {
        let f1 = act.firstProjectionWidth(dFF: dFF)
        let w = tensor(w1.map { Array($0.prefix(f1)) }), b = tensor([Array(b1.prefix(f1))])
        let input = tensor(x), v2 = tensor(w2), c2 = tensor([b2])
        let y = Tensor(shape: [3, d]), h = Tensor(shape: [3, f1]), a = Tensor(shape: [3, dFF])
        FeedForward.forward(y: y.pointer, h: h.pointer, a: a.pointer, x: input.pointer,
                            w1: w.pointer, b1: b.pointer, w2: v2.pointer, b2: c2.pointer,
                            n: 3, d: d, dFF: dFF, activation: act)
        return y
    }

    func testSwiGLUGateIsTheFirstHalfOfW1() {
        XCTAssertEqual(Activation.swiglu.firstProjectionWidth(dFF: dFF), 2 * dFF)
        let want = expected(.swiglu), swapped = expected(.swiglu, swapHalves: true)
        XCTAssertGreaterThan(zip(want, swapped).map { abs($0 - $1) }.max()!, 0.1, "the case tells the halves apart")
        assertValues(kernel(.swiglu), want, "swiglu y")
    }

    func testReLUValues() {
        assertValues(kernel(.relu), expected(.relu), "relu y")
    }

    /// Exact (erf) GELU, not the tanh approximation.
    func testGELUValues() {
        assertValues(kernel(.gelu), expected(.gelu), "gelu y")
    }

    /// The dense FFN sub-block (and shared experts) computes the same function from its parameters.
    func testDenseFeedForwardSwiGLU() throws {
        var rng = RandomGenerator(seed: 4)
        let ffn = DenseFeedForward(name: "ffn", modelDim: d, hiddenDim: dFF, activation: .swiglu, rng: &rng)
        XCTAssertEqual(ffn.w1.shape, [d, 2 * dFF])
        fill(ffn.w1.value, w1); fill(ffn.b1.value, [b1]); fill(ffn.w2.value, w2); fill(ffn.b2.value, [b2])
        let layout = TokenLayout(side: .encoder, batchSize: 1, length: 3, mask: [1, 1, 1])
        let y = try ffn.forward(tensor(x), layout: layout, training: false)
        assertValues(y, expected(.swiglu), "dense swiglu y")
    }
}
