import XCTest
import ThorTensor
import ThorModel

/// Kernels that split their work over threads give the same bits as on one thread (and, for the
/// cross-entropy with a kept softmax, as the plain kernels their finite-difference tests cover).
final class ParallelKernelTests: XCTestCase {
    func testCrossEntropyWithKeptSoftmaxMatchesPlainKernelsBitForBit() {
        let n = 53, v = 37, eps: Float = 0.1
        let logits = randomTensor([n, v], seed: 21, std: 3)
        var g = RandomGenerator(seed: 22)
        let targets: [Int32] = (0..<n).map { _ in Int32(g.nextInt(below: v)) }
        let mask: [Float] = (0..<n).map { $0 % 7 == 3 ? 0 : 1 }
        targets.withUnsafeBufferPointer { tb in mask.withUnsafeBufferPointer { mb in
            let t = tb.baseAddress!, m = mb.baseAddress!
            let plain = CrossEntropy.forward(logits: logits.pointer, targets: t, mask: m, n: n, vocabularySize: v, smoothing: eps)
            let dPlain = Tensor(shape: [n, v])
            CrossEntropy.backward(dlogits: dPlain.pointer, logits: logits.pointer, targets: t, mask: m, n: n,
                                  vocabularySize: v, smoothing: eps, scale: 1.5)
            for threads in [1, 2, 3] {
                let e = Tensor(shape: [n, v]), inv = Tensor(shape: [n])
                let kept = CrossEntropy.forward(logits: logits.pointer, targets: t, mask: m, n: n, vocabularySize: v,
                                                smoothing: eps, exponentials: e.pointer, inverseSums: inv.pointer,
                                                threads: threads)
                XCTAssertEqual(kept.loss.bitPattern, plain.loss.bitPattern, "\(threads) threads")
                XCTAssertEqual(kept.lossSum.bitPattern, plain.lossSum.bitPattern)
                XCTAssertEqual(kept.nllSum.bitPattern, plain.nllSum.bitPattern)
                XCTAssertEqual(kept.tokenCount, plain.tokenCount)
                let d = Tensor(shape: [n, v])
                d.pointer.update(repeating: .nan, count: d.count)  // pad rows must be written too
                CrossEntropy.backward(dlogits: d.pointer, exponentials: e.pointer, inverseSums: inv.pointer, targets: t,
                                      mask: m, n: n, vocabularySize: v, smoothing: eps, scale: 1.5, threads: threads)
                XCTAssertTrue(d.bitwiseEqual(dPlain), "∂logits, \(threads) threads")
            }
        } }
    }

    func testAttentionKernelGivesTheSameBitsOnAnyThreadCount() {
        let b = 5, heads = 3, dh = 4, d = heads * dh, tq = 6
        for kind in ["self", "causal", "cross"] {
            let tk = kind == "cross" ? 7 : tq
            let q = randomTensor([b * tq, d], seed: 31), k = randomTensor([b * tk, d], seed: 32)
            let v = randomTensor([b * tk, d], seed: 33), dout = randomTensor([b * tq, d], seed: 34)
            var mask = [Float](repeating: 1, count: b * tk)
            mask[tk - 1] = 0; mask[2 * tk + 1] = 0
            if kind == "cross" { for j in 0..<tk { mask[3 * tk + j] = 0 } }  // a fully padded sentence
            let shape = AttentionKernel.Shape(batch: b, queryLength: tq, keyLength: tk, dim: d, heads: heads,
                                              causal: kind == "causal")
            let drop = Tensor(shape: [shape.probsCount])
            var g = RandomGenerator(seed: 35)
            Dropout.makeMask(drop.pointer, count: drop.count, rate: 0.2, rng: &g)
            func run(_ threads: Int) -> [Tensor] {
                let out = Tensor(shape: [b * tq, d]), probs = Tensor(shape: [shape.probsCount])
                let weights = Tensor(shape: [shape.probsCount])
                let dq = Tensor(shape: [b * tq, d]), dk = Tensor(shape: [b * tk, d]), dv = Tensor(shape: [b * tk, d])
                let scratch = Tensor(shape: [tq * tk])
                mask.withUnsafeBufferPointer { mb in
                    AttentionKernel.forward(out: out.pointer, probs: probs.pointer, weights: weights.pointer,
                                            q: q.pointer, k: k.pointer, v: v.pointer, keyMask: mb.baseAddress!,
                                            dropMask: drop.pointer, shape: shape, threads: threads)
                }
                AttentionKernel.backward(dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, dout: dout.pointer,
                                         probs: probs.pointer, weights: weights.pointer, dropMask: drop.pointer,
                                         q: q.pointer, k: k.pointer, v: v.pointer, scratch: scratch.pointer,
                                         shape: shape, threads: threads)
                return [out, probs, weights, dq, dk, dv]
            }
            let one = run(1)
            XCTAssertGreaterThan(one[3].array.map(abs).max()!, 0, "a non-trivial gradient")
            for threads in [2, 4, 64] {
                let many = run(threads)
                for (i, name) in ["out", "probs", "weights", "dq", "dk", "dv"].enumerated() {
                    XCTAssertTrue(many[i].bitwiseEqual(one[i]), "\(kind): \(name) with \(threads) threads")
                }
            }
        }
    }

    func testDropoutMaskIsTheSequentialDrawsOnAnyThreadCount() {
        let n = 100_003, rate: Float = 0.1
        var sequential = RandomGenerator(seed: 51)
        sequential.advance(by: 5)
        let start = sequential
        let expected = (0..<n).map { _ in sequential.nextFloat() < rate ? Float(0) : 1 / (1 - rate) }
        for threads in [1, 2, 3] {
            var g = start
            let mask = Tensor(shape: [n])
            Dropout.makeMask(mask.pointer, count: n, rate: rate, rng: &g, threads: threads)
            XCTAssertEqual(mask.array.map(\.bitPattern), expected.map(\.bitPattern), "\(threads) threads")
            XCTAssertEqual(g, sequential, "the generator ends n draws further")
        }
    }
}
