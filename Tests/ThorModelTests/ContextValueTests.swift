import Foundation
import XCTest
import ThorTensor
import ThorExperts
import ThorModel

/// The context `c` (SPEC §2.4) and the context gate `g`, `h̃` (SPEC §2.5) on hand-made cases,
/// against the formulas worked out here with plain loops.
final class ContextValueTests: XCTestCase {
    let d = 2

    // MARK: context

    /// Three sentences of three positions, width 2: one with a padding tail, one of a single
    /// token, one all padding (its context is 0).
    let h: [[Double]] = [[1, -2], [3, 4], [50, 50],
                         [-1, 0.5], [70, 70], [80, 80],
                         [9, 9], [9, 9], [9, 9]]
    let mask: [Float] = [1, 1, 0,
                         1, 0, 0,
                         0, 0, 0]

    /// Encoder: `c_b` = mean of `h_i` over the non-pad positions of sentence b.
    func testEncoderContextIsTheMeanOverNonPadPositions() {
        let c = Tensor(shape: [3, d]), inverse = Tensor(shape: [3])
        let x = tensor(h)
        mask.withUnsafeBufferPointer {
            Context.encoderForward(h: x.pointer, mask: $0.baseAddress!, batch: 3, length: 3, dim: d,
                                   c: c.pointer, inverse: inverse.pointer)
        }
        var want: [Double] = [], wantInverse: [Double] = []
        for s in 0..<3 {
            let rows = (0..<3).map { s * 3 + $0 }.filter { mask[$0] != 0 }
            for j in 0..<d { want.append(rows.isEmpty ? 0 : rows.reduce(0.0) { $0 + h[$1][j] } / Double(rows.count)) }
            wantInverse.append(rows.isEmpty ? 0 : 1 / Double(rows.count))
        }
        XCTAssertEqual(want, [2, 1, -1, 0.5, 0, 0], "the loop reproduces the hand values")
        assertValues(c, want, "c")
        assertValues(inverse, wantInverse, "1/count")
    }

    /// Decoder: `c_t = (1/t) Σ_{i≤t} h_i` over the non-pad positions up to t, in full passes and
    /// step by step (incremental decoding).
    func testDecoderContextIsTheCausalPrefixMean() {
        let c = Tensor(shape: [9, d]), inverse = Tensor(shape: [9])
        let x = tensor(h)
        mask.withUnsafeBufferPointer {
            Context.decoderForward(h: x.pointer, mask: $0.baseAddress!, batch: 3, length: 3, dim: d,
                                   c: c.pointer, inverse: inverse.pointer)
        }
        var want = [[Double]](repeating: [0, 0], count: 9)
        for s in 0..<3 {
            for i in 0..<3 where mask[s * 3 + i] != 0 {
                let prefix = (0...i).map { s * 3 + $0 }.filter { mask[$0] != 0 }
                want[s * 3 + i] = (0..<d).map { j in prefix.reduce(0.0) { $0 + h[$1][j] } / Double(prefix.count) }
                XCTAssertEqual(Double(inverse[s * 3 + i]), 1 / Double(prefix.count), accuracy: 1e-7, "1/t at row \(s * 3 + i)")
            }
        }
        XCTAssertEqual(want[1], [2, 1], "the loop reproduces the hand value (1 + 3)/2, (−2 + 4)/2")
        for t in 0..<9 where mask[t] != 0 {
            for j in 0..<d { XCTAssertEqual(Double(c[t * d + j]), want[t][j], accuracy: 1e-6, "c[\(t), \(j)]") }
        }

        // Step by step, one position of one sentence at a time.
        for s in 0..<3 {
            let sum = Tensor(shape: [d]), step = Tensor(shape: [d])
            var count: Float = 0
            for i in 0..<3 {
                let t = s * 3 + i
                _ = Context.step(h: x.pointer + t * d, isToken: mask[t] != 0, sum: sum.pointer, count: &count, dim: d, c: step.pointer)
                guard mask[t] != 0 else { continue }
                for j in 0..<d { XCTAssertEqual(Double(step[j]), want[t][j], accuracy: 1e-6, "incremental c[\(t), \(j)]") }
            }
        }
    }

    // MARK: context gate

    /// `weight` [2d, d]: rows 0..<d multiply h, rows d..<2d multiply c.
    let gateWeight: [[Double]] = [[0.5, -1.0],
                                  [0.25, 0.75],
                                  [-0.5, 1.5],
                                  [1.0, 0.0]]
    let gateBias: [Double] = [0.1, -0.2]
    let gateH: [[Double]] = [[1, 2], [-1, 0.5], [0.5, -1.5], [2, 1]]

    func gate() -> ContextGate {
        var rng = RandomGenerator(seed: 3)
        let g = ContextGate(name: "g", dim: d, rng: &rng)
        fill(g.weight.value, gateWeight)
        fill(g.bias.value, [gateBias])
        return g
    }

    /// `g = σ(W_g [h; c] + b_g)`, `h̃ = g ⊙ h + (1 − g) ⊙ c (+ r)`, row by row.
    func expected(context: [[Double]], rowsPerContext l: Int, r: [[Double]]?) -> (g: [Double], ht: [Double]) {
        var g: [Double] = [], ht: [Double] = []
        for (t, ht0) in gateH.enumerated() {
            let c = context[t / l]
            for j in 0..<d {
                var a = gateBias[j]
                for i in 0..<d { a += ht0[i] * gateWeight[i][j] + c[i] * gateWeight[d + i][j] }
                let s = sigmoid(a)
                g.append(s)
                ht.append(s * ht0[j] + (1 - s) * c[j] + (r?[t / 2][j] ?? 0))
            }
        }
        return (g, ht)
    }

    func runGate(context: [[Double]], rowsPerContext l: Int, r: [[Double]]?) -> (g: Tensor, ht: Tensor) {
        let g = Tensor(shape: [4, d]), ht = Tensor(shape: [4, d])
        let x = tensor(gateH), c = tensor(context), rt = r.map(tensor)
        gate().forward(h: x.pointer, c: c.pointer, rows: 4, rowsPerContext: l, r: rt.map { UnsafePointer($0.pointer) },
                       rowsPerSentence: 2, g: g.pointer, ht: ht.pointer)
        return (g, ht)
    }

    /// Encoder: one context row per sentence (two sentences of two rows).
    func testGateWithOneContextPerSentence() {
        let context: [[Double]] = [[0.5, -0.5], [1.0, 2.0]]
        let got = runGate(context: context, rowsPerContext: 2, r: nil)
        let want = expected(context: context, rowsPerContext: 2, r: nil)
        assertValues(got.g, want.g, "g")
        assertValues(got.ht, want.ht, "h̃")
    }

    /// Decoder: one context row per token.
    func testGateWithOneContextPerToken() {
        let context: [[Double]] = [[0.5, -0.5], [1.0, 2.0], [-1, 1], [0, 0.25]]
        let got = runGate(context: context, rowsPerContext: 1, r: nil)
        let want = expected(context: context, rowsPerContext: 1, r: nil)
        assertValues(got.g, want.g, "g")
        assertValues(got.ht, want.ht, "h̃")
    }

    /// Infuse: `h̃ = g ⊙ h + (1 − g) ⊙ c + r`, r per sentence.
    func testGateInfuseAddsTheTaskRepresentation() {
        let context: [[Double]] = [[0.5, -0.5], [1.0, 2.0]]
        let r: [[Double]] = [[0.3, -0.7], [2.0, 1.0]]
        let got = runGate(context: context, rowsPerContext: 2, r: r)
        let want = expected(context: context, rowsPerContext: 2, r: r)
        assertValues(got.g, want.g, "g")
        assertValues(got.ht, want.ht, "h̃ + r")
    }

    /// With zero weights and bias the gate is 1/2 everywhere: `h̃ = (h + c)/2`.
    func testZeroGateAveragesTokenAndContext() {
        let g = gate()
        g.weight.value.zero(); g.bias.value.zero()
        let x = tensor([[1, 3]]), c = tensor([[5, -1]])
        let gv = Tensor(shape: [1, d]), ht = Tensor(shape: [1, d])
        g.forward(h: x.pointer, c: c.pointer, rows: 1, rowsPerContext: 1, r: nil, rowsPerSentence: 1, g: gv.pointer, ht: ht.pointer)
        assertValues(gv, [0.5, 0.5], "g")
        assertValues(ht, [3, 1], "h̃")
    }
}
