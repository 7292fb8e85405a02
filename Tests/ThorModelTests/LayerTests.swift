import XCTest
import ThorTensor
import ThorExperts
import ThorModel

/// Every hand-written layer backward against central finite differences.
final class LayerTests: XCTestCase {
    func testEmbeddingAndTiedProjectionBackward() {
        let v = 7, d = 6, n = 5
        let table = randomTensor([v, d], seed: 1)
        let ids: [Int32] = [3, 0, 3, 6, 2]
        let proj = RandomProjection(shape: [n, v], seed: 2)
        // loss = proj( (scale · E[ids]) · Eᵀ ): exercises lookup and tied projection on one table.
        func run() -> (Tensor, Tensor) {
            let x = Tensor(shape: [n, d]), logits = Tensor(shape: [n, v])
            ids.withUnsafeBufferPointer {
                Embedding.forward(out: x.pointer, ids: $0.baseAddress!, table: table.pointer, n: n, d: d, scale: 1.5)
            }
            Embedding.projectForward(logits: logits.pointer, hidden: x.pointer, table: table.pointer, n: n, d: d, vocabularySize: v)
            return (x, logits)
        }
        let (x, _) = run()
        let dtable = Tensor(shape: [v, d]), dx = Tensor(shape: [n, d])
        Embedding.projectBackward(dhidden: dx.pointer, dtable: dtable.pointer, dlogits: proj.weights.pointer,
                                  hidden: x.pointer, table: table.pointer, n: n, d: d, vocabularySize: v)
        ids.withUnsafeBufferPointer {
            Embedding.backward(dtable: dtable.pointer, dout: dx.pointer, ids: $0.baseAddress!, n: n, d: d, scale: 1.5)
        }
        checkGradient("embedding", of: table, analytic: dtable, samples: 42) { proj.loss(run().1) }
        XCTAssertEqual(x[1 * d + 2], 1.5 * table[0 * d + 2])
    }

    func testPositionalEncodingMatchesSpecFormula() {
        let d = 8
        let t = PositionalEncoding.table(positions: 5, dim: d)
        for pos in 0..<5 {
            for i in 0..<(d / 2) {
                let angle = Double(pos) / pow(10000, Double(2 * i) / Double(d))
                XCTAssertEqual(t[pos * d + i], Float(sin(angle)), accuracy: 1e-6)
                XCTAssertEqual(t[pos * d + d / 2 + i], Float(cos(angle)), accuracy: 1e-6)
            }
        }
        XCTAssertEqual(t[0], 0); XCTAssertEqual(t[d / 2], 1)
    }

    func testLayerNormBackward() {
        let n = 4, d = 6
        let ln = LayerNorm(name: "ln", dim: d)
        var g = RandomGenerator(seed: 3)
        g.fillNormal(ln.weight.value.pointer, count: d, std: 1)
        g.fillNormal(ln.bias.value.pointer, count: d, std: 1)
        let x = randomTensor([n, d], seed: 4, std: 2)
        let proj = RandomProjection(shape: [n, d], seed: 5)
        let y = ln.forward(x, training: true)
        // mean 0, variance 1 before the affine part
        let plain = LayerNorm(name: "p", dim: d).forward(x, training: false)
        var m = 0.0, s = 0.0
        for j in 0..<d { m += Double(plain[j]); s += Double(plain[j] * plain[j]) }
        XCTAssertEqual(m, 0, accuracy: 1e-5); XCTAssertEqual(s / Double(d), 1, accuracy: 1e-3)
        XCTAssertEqual(y.shape, [n, d])
        let dx = Tensor(shape: [n, d])
        ln.backward(proj.weights, into: dx)
        let loss = { proj.loss(ln.forward(x, training: false)) }
        checkGradient("ln x", of: x, analytic: dx, loss: loss)
        checkGradient("ln weight", of: ln.weight.value, analytic: ln.weight.grad, loss: loss)
        checkGradient("ln bias", of: ln.bias.value, analytic: ln.bias.grad, loss: loss)
    }

    /// LayerNorm's kernels split rows (forward, `∂x`) and columns (`∂weight`, `∂bias`) over
    /// threads: the same bits for 1, 2 and 3 threads, and the split backward matches finite
    /// differences.
    func testLayerNormKernelsGiveTheSameBitsForAnyThreadCount() {
        let n = 300, d = 40
        let x = randomTensor([n, d], seed: 11, std: 2), dy = randomTensor([n, d], seed: 12)
        let w = randomTensor([d], seed: 13), b = randomTensor([d], seed: 14)
        func run(_ threads: Int) -> [Tensor] {
            let y = Tensor(shape: [n, d]), mean = Tensor(shape: [n]), rstd = Tensor(shape: [n])
            LayerNormKernel.forward(out: y.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: x.pointer,
                                    weight: w.pointer, bias: b.pointer, n: n, d: d, threads: threads)
            let dx = randomTensor([n, d], seed: 15), dw = randomTensor([d], seed: 16), db = randomTensor([d], seed: 17)
            LayerNormKernel.backward(dinp: dx.pointer, dweight: dw.pointer, dbias: db.pointer, dout: dy.pointer,
                                     inp: x.pointer, weight: w.pointer, mean: mean.pointer, rstd: rstd.pointer,
                                     n: n, d: d, threads: threads)
            return [y, mean, rstd, dx, dw, db]
        }
        let one = run(1)
        for threads in [2, 3] {
            for (i, (a, c)) in zip(run(threads), one).enumerated() {
                XCTAssertTrue(a.bitwiseEqual(c), "\(threads) threads: output \(i) differs from 1 thread")
            }
        }
        // Finite differences through the split backward (2 threads): loss = Σ dy ⊙ LN(x).
        let dx = Tensor(shape: [n, d]), dw = Tensor(shape: [d]), db = Tensor(shape: [d])
        let mean = Tensor(shape: [n]), rstd = Tensor(shape: [n]), y = Tensor(shape: [n, d])
        LayerNormKernel.forward(out: y.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: x.pointer,
                                weight: w.pointer, bias: b.pointer, n: n, d: d, threads: 2)
        LayerNormKernel.backward(dinp: dx.pointer, dweight: dw.pointer, dbias: db.pointer, dout: dy.pointer,
                                 inp: x.pointer, weight: w.pointer, mean: mean.pointer, rstd: rstd.pointer,
                                 n: n, d: d, threads: 2)
        let loss = { () -> Double in
            let out = Tensor(shape: [n, d]), m = Tensor(shape: [n]), r = Tensor(shape: [n])
            LayerNormKernel.forward(out: out.pointer, mean: m.pointer, rstd: r.pointer, inp: x.pointer,
                                    weight: w.pointer, bias: b.pointer, n: n, d: d)
            var s = 0.0
            for i in 0..<(n * d) { s += Double(out[i]) * Double(dy[i]) }
            return s
        }
        checkGradient("ln x (2 threads)", of: x, analytic: dx, loss: loss)
        checkGradient("ln weight (2 threads)", of: w, analytic: dw, loss: loss)
        checkGradient("ln bias (2 threads)", of: b, analytic: db, loss: loss)
    }

    /// Self (padding), causal self (padding) and cross attention, with and without attention dropout.
    func testAttentionBackwardForEveryKind() {
        let d = 8, heads = 2, b = 2, tq = 4
        for kind in ["self", "causal", "cross"] {
            for rate: Float in [0, 0.3] {
                var g = RandomGenerator(seed: 6)
                let attn = MultiHeadAttention(name: "a", dim: d, heads: heads, rng: &g)
                for p in attn.parameters where p.shape.count == 1 { g.fillNormal(p.value.pointer, count: p.count, std: 0.3) }
                let tk = kind == "cross" ? 5 : tq
                let x = randomTensor([b * tq, d], seed: 7)
                let kv = kind == "cross" ? randomTensor([b * tk, d], seed: 8) : nil
                // sentence 0 has padding at the end; in cross, sentence 1 is fully padded (zero rows)
                var mask = [Float](repeating: 1, count: b * tk)
                mask[tk - 1] = 0
                if kind == "cross" { for j in 0..<tk { mask[tk + j] = 0 } }
                let shape = AttentionKernel.Shape(batch: b, queryLength: tq, keyLength: tk, dim: d, heads: heads,
                                                  causal: kind == "causal")
                let proj = RandomProjection(shape: [b * tq, d], seed: 9)
                func run(_ training: Bool) -> Tensor {
                    var r = RandomGenerator(seed: 10)  // same dropout mask every call
                    return attn.forward(query: x, keyValue: kv, shape: shape, keyMask: mask, dropout: rate,
                                        training: training, rng: &r)
                }
                _ = run(true)
                let grads = attn.backward(proj.weights)
                let loss = { proj.loss(run(true)) }
                let label = "\(kind) p=\(rate)"
                checkGradient("\(label) query", of: x, analytic: grads.query, loss: loss)
                if let kv { checkGradient("\(label) kv", of: kv, analytic: grads.keyValue!, loss: loss) }
                for p in attn.parameters { checkGradient("\(label) \(p.name)", of: p.value, analytic: p.grad, loss: loss) }
                if kind == "cross" {
                    let y = run(false)
                    // fully masked sentence: context 0, so its rows equal the output bias
                    for j in 0..<d { XCTAssertEqual(y[tq * d + j], attn.bo.value[j], accuracy: 1e-6) }
                }
            }
        }
    }

    /// Causal masking: a later query position cannot see later keys.
    func testCausalAttentionIgnoresLaterPositions() {
        let d = 8, t = 5
        var g = RandomGenerator(seed: 1)
        let attn = MultiHeadAttention(name: "a", dim: d, heads: 2, rng: &g)
        let x = randomTensor([t, d], seed: 2)
        let shape = AttentionKernel.Shape(batch: 1, queryLength: t, keyLength: t, dim: d, heads: 2, causal: true)
        let y1 = attn.forward(query: x, keyValue: nil, shape: shape, keyMask: nil, dropout: 0, training: false, rng: &g)
        for j in 0..<d { x[(t - 1) * d + j] += 1 }
        let y2 = attn.forward(query: x, keyValue: nil, shape: shape, keyMask: nil, dropout: 0, training: false, rng: &g)
        for i in 0..<((t - 1) * d) { XCTAssertEqual(y1[i], y2[i]) }
        XCTAssertNotEqual(y1[(t - 1) * d], y2[(t - 1) * d])
    }

    func testLabelSmoothedCrossEntropyValueAndBackward() {
        let n = 4, v = 6, eps: Float = 0.1
        let logits = randomTensor([n, v], seed: 11, std: 2)
        let targets: [Int32] = [2, 5, 0, 1]
        let mask: [Float] = [1, 1, 0, 1]
        func loss() -> CrossEntropyResult {
            targets.withUnsafeBufferPointer { t in mask.withUnsafeBufferPointer { m in
                CrossEntropy.forward(logits: logits.pointer, targets: t.baseAddress!, mask: m.baseAddress!,
                                     n: n, vocabularySize: v, smoothing: eps)
            } }
        }
        // Direct definition: −Σ_v ((1−ε)·onehot + ε/V) · log_softmax, mean over the 3 real rows.
        var expected = 0.0
        for r in 0..<n where mask[r] == 1 {
            let row = (0..<v).map { Double(logits[r * v + $0]) }
            let lz = log(row.map { exp($0) }.reduce(0, +))
            for j in 0..<v {
                let t = (j == Int(targets[r]) ? 1 - Double(eps) : 0) + Double(eps) / Double(v)
                expected -= t * (row[j] - lz)
            }
        }
        expected /= 3
        let r = loss()
        XCTAssertEqual(r.tokenCount, 3)
        XCTAssertEqual(Double(r.loss), expected, accuracy: 1e-5)
        let dlogits = Tensor(shape: [n, v])
        targets.withUnsafeBufferPointer { t in mask.withUnsafeBufferPointer { m in
            CrossEntropy.backward(dlogits: dlogits.pointer, logits: logits.pointer, targets: t.baseAddress!,
                                  mask: m.baseAddress!, n: n, vocabularySize: v, smoothing: eps, scale: 2)
        } }
        for j in 0..<v { XCTAssertEqual(dlogits[2 * v + j], 0) }
        checkGradient("logits", of: logits, analytic: dlogits, eps: 1e-2, samples: 24) { 2 * loss().lossSum / 3 }
    }

    func testDropoutMaskBackwardAndDeterminism() {
        let n = 2000
        let x = randomTensor([n], seed: 12)
        var g1 = RandomGenerator(seed: 13), g2 = RandomGenerator(seed: 13)
        let y1 = Tensor(copying: x), y2 = Tensor(copying: x)
        let m1 = Dropout.apply(y1, rate: 0.25, training: true, rng: &g1)!
        _ = Dropout.apply(y2, rate: 0.25, training: true, rng: &g2)
        XCTAssertTrue(y1.bitwiseEqual(y2), "same seed, same mask")
        let dropped = m1.array.filter { $0 == 0 }.count
        XCTAssertEqual(Double(dropped) / Double(n), 0.25, accuracy: 0.04)
        XCTAssertTrue(m1.array.allSatisfy { $0 == 0 || abs($0 - 1 / 0.75) < 1e-6 })
        XCTAssertNil(Dropout.apply(Tensor(copying: x), rate: 0.25, training: false, rng: &g1))
        // backward with the kept mask against finite differences
        let proj = RandomProjection(shape: [n], seed: 14)
        let dx = Tensor(copying: proj.weights)
        Dropout.applyBackward(dx, mask: m1)
        checkGradient("dropout", of: x, analytic: dx) {
            let y = Tensor(shape: [n])
            Dropout.forward(out: y.pointer, inp: x.pointer, mask: m1.pointer, count: n)
            return proj.loss(y)
        }
    }
}
