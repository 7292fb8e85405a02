import XCTest
import ThorTensor
import ThorExperts
import ThorModel
#if canImport(Glibc)
import Glibc
#endif

/// The kernels that moved from a scalar `expf` per element to CThorKernels' vector `expf` (and
/// vector running maximum) give the bits of the scalar loops they replaced, written out here with
/// the C library's `expf`, on inputs with a wide range (exponentials that underflow to subnormals
/// and to zero, masked −inf entries, ties and zeros as the maximum).
final class VectorExpfUseTests: XCTestCase {
    private func values(_ count: Int, seed: UInt64, spread: Float) -> [Float] {
        var g = RandomGenerator(seed: seed)
        return (0..<count).map { i in
            switch i % 23 {
            case 5: return 0
            case 11: return -0.0
            default: return (g.nextFloat() * 2 - 1) * spread
            }
        }
    }

    /// The training cross-entropy (kept softmax) against its old scalar loop: loss, exponentials,
    /// inverse sums, bit for bit.
    func testCrossEntropyWithKeptSoftmaxMatchesScalarExpfLoop() {
        let n = 29, v = 1031, eps: Float = 0.1
        var logits = values(n * v, seed: 5, spread: 60)
        logits[3 * v + 17] = 0; logits[4 * v + 2] = 1e-30  // rows whose maximum is a zero or tiny
        for j in 0..<v where j != 17 { logits[3 * v + j] = -abs(logits[3 * v + j]) }
        var g = RandomGenerator(seed: 6)
        let targets: [Int32] = (0..<n).map { _ in Int32(g.nextInt(below: v)) }
        let mask: [Float] = (0..<n).map { $0 % 5 == 2 ? 0 : 1 }
        // The loop CrossEntropy.forward(…exponentials:…) ran before the vector kernels.
        var wantE = [Float](repeating: 0, count: n * v), wantInv = [Float](repeating: 0, count: n)
        var total = 0.0, nll = 0.0, count = 0
        for r in 0..<n where mask[r] != 0 {
            var mx = -Float.infinity
            for j in 0..<v { mx = max(mx, logits[r * v + j]) }
            var sumExp = 0.0, sumLogits = 0.0, floatSum: Float = 0
            for j in 0..<v {
                let x = expf(logits[r * v + j] - mx)
                wantE[r * v + j] = x
                floatSum += x
                sumExp += Double(x); sumLogits += Double(logits[r * v + j])
            }
            wantInv[r] = 1 / floatSum
            let logZ = Double(mx) + log(sumExp)
            let logpTarget = Double(logits[r * v + Int(targets[r])]) - logZ
            total += -(1 - Double(eps)) * logpTarget - Double(eps) / Double(v) * (sumLogits - Double(v) * logZ)
            nll -= logpTarget
            count += 1
        }
        let e = Tensor(shape: [n, v]), inv = Tensor(shape: [n])
        let got = logits.withUnsafeBufferPointer { lp in targets.withUnsafeBufferPointer { tp in mask.withUnsafeBufferPointer { mp in
            CrossEntropy.forward(logits: lp.baseAddress!, targets: tp.baseAddress!, mask: mp.baseAddress!, n: n,
                                 vocabularySize: v, smoothing: eps, exponentials: e.pointer, inverseSums: inv.pointer, threads: 2)
        } } }
        XCTAssertEqual(got.lossSum.bitPattern, total.bitPattern)
        XCTAssertEqual(got.nllSum.bitPattern, nll.bitPattern)
        XCTAssertEqual(got.tokenCount, count)
        XCTAssertEqual(got.loss.bitPattern, Float(total / Double(count)).bitPattern)
        for r in 0..<n where mask[r] != 0 {
            XCTAssertEqual(inv[r].bitPattern, wantInv[r].bitPattern, "1/Σ of row \(r)")
            for j in 0..<v where e[r * v + j].bitPattern != wantE[r * v + j].bitPattern {
                XCTFail("e[\(r), \(j)]: \(e[r * v + j]) vs \(wantE[r * v + j])"); return
            }
        }
        XCTAssertTrue(wantE.contains { $0 != 0 && $0 < Float.leastNormalMagnitude }, "the input reaches subnormal exponentials")
        XCTAssertTrue(wantE.contains(0), "and exponentials that underflow to 0")
    }

    /// Attention's softmax (causal and key-masked rows, so −inf entries) against the scalar loop.
    func testAttentionProbabilitiesMatchScalarExpfLoop() {
        let b = 2, heads = 2, dh = 5, t = 13, d = heads * dh
        let shape = AttentionKernel.Shape(batch: b, queryLength: t, keyLength: t, dim: d, heads: heads, causal: true)
        let q = Tensor(shape: [b * t, d], values: values(b * t * d, seed: 7, spread: 9))
        let k = Tensor(shape: [b * t, d], values: values(b * t * d, seed: 8, spread: 9))
        let vv = Tensor(shape: [b * t, d], values: values(b * t * d, seed: 9, spread: 1))
        let keyMask = Tensor(shape: [b * t], values: (0..<(b * t)).map { $0 % t >= 10 ? 0 : 1 })
        let out = Tensor(shape: [b * t, d]), probs = Tensor(shape: [b * heads * t, t]), weights = Tensor(shape: [b * heads * t, t])
        AttentionKernel.forward(out: out.pointer, probs: probs.pointer, weights: weights.pointer, q: q.pointer, k: k.pointer,
                                v: vv.pointer, keyMask: keyMask.pointer, dropMask: nil, shape: shape)
        let scale = 1 / Float(dh).squareRoot()
        for bi in 0..<b {
            for h in 0..<heads {
                let scores = Tensor(shape: [t, t])
                gemm(transB: true, m: t, n: t, k: dh, alpha: scale, a: q.pointer + bi * t * d + h * dh, lda: d,
                     b: k.pointer + bi * t * d + h * dh, ldb: d, c: scores.pointer, ldc: t)
                for i in 0..<t {
                    let row = scores.pointer + i * t
                    var mx = -Float.infinity
                    for j in 0..<t {
                        if j > i || keyMask[bi * t + j] == 0 { row[j] = -Float.infinity } else { mx = max(mx, row[j]) }
                    }
                    if mx == -Float.infinity { row.update(repeating: 0, count: t) } else {
                        var sum: Float = 0
                        for j in 0..<t { let e = row[j] == -Float.infinity ? 0 : expf(row[j] - mx); row[j] = e; sum += e }
                        let inv = 1 / sum
                        for j in 0..<t { row[j] *= inv }
                    }
                    let got = probs.pointer + ((bi * heads + h) * t + i) * t
                    for j in 0..<t { XCTAssertEqual(got[j].bitPattern, row[j].bitPattern, "p[\(bi), \(h), \(i), \(j)]") }
                }
            }
        }
    }

    /// The context gate's σ against `FeedForward.sigmoid` (scalar `expf`) on its pre-activation.
    func testContextGateSigmoidMatchesScalarSigmoid() {
        let d = 37, n = 150
        var rng = RandomGenerator(seed: 10)
        let gate = ContextGate(name: "g", dim: d, rng: &rng)
        gate.weight.value.pointer.update(from: values(2 * d * d, seed: 11, spread: 3), count: 2 * d * d)
        gate.bias.value.pointer.update(from: values(d, seed: 12, spread: 1), count: d)
        let h = Tensor(shape: [n, d], values: values(n * d, seed: 13, spread: 4))
        let c = Tensor(shape: [n, d], values: values(n * d, seed: 14, spread: 4))
        let g = Tensor(shape: [n, d]), ht = Tensor(shape: [n, d])
        gate.forward(h: h.pointer, c: c.pointer, rows: n, rowsPerContext: 1, r: nil, rowsPerSentence: 1,
                     g: g.pointer, ht: ht.pointer)
        // The pre-activation as the gate forms it: bias, then + c·W_gc, then + h·W_gh.
        let a = Tensor(shape: [n, d])
        Kernels.addRowBias(gate.bias.value.pointer, to: a.pointer, rows: n, cols: d)
        gemm(m: n, n: d, k: d, a: c.pointer, b: gate.weight.value.pointer + d * d, beta: 1, c: a.pointer)
        gemm(m: n, n: d, k: d, a: h.pointer, b: gate.weight.value.pointer, beta: 1, c: a.pointer)
        for i in 0..<(n * d) {
            let s = FeedForward.sigmoid(a[i])
            XCTAssertEqual(g[i].bitPattern, s.bitPattern, "g[\(i)]")
            let want = s * h[i] + (1 - s) * c[i]
            XCTAssertEqual(ht[i].bitPattern, want.bitPattern, "h̃[\(i)]")
        }
    }
}
