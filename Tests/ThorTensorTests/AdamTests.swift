import XCTest
import ThorTensor

/// Adam's vectorized, multi-threaded update against the plain scalar definition, bit for bit.
final class AdamTests: XCTestCase {
    /// The scalar loop `Adam.update` replaced (Kingma & Ba with bias correction, AdamW decay).
    private func reference(w: inout [Float], g: [Float], m: inout [Float], v: inout [Float],
                           lr: Float, clip: Float, step: Int, s: AdamSettings) {
        let b1 = s.beta1, b2 = s.beta2
        let c1 = 1 - Float(pow(Double(b1), Double(step)))
        let c2 = 1 - Float(pow(Double(b2), Double(step)))
        for i in 0..<w.count {
            let gi = g[i] * clip
            let mi = b1 * m[i] + (1 - b1) * gi
            let vi = b2 * v[i] + (1 - b2) * gi * gi
            m[i] = mi; v[i] = vi
            let mhat = mi / c1
            let vhat = vi / c2
            w[i] -= lr * (mhat / (vhat.squareRoot() + s.epsilon) + s.weightDecay * w[i])
        }
    }

    func testUpdateMatchesScalarDefinitionBitForBitForAnyThreadCount() {
        // Long enough to be split over threads (ranges of ≥ 32768), with a tail that is no multiple of 8.
        let n = 70_005
        let settings = AdamSettings(beta1: 0.9, beta2: 0.98, epsilon: 1e-8, weightDecay: 0.01)
        var rng = RandomGenerator(seed: 41)
        func values(_ std: Float) -> [Float] {
            let t = Tensor(shape: [n])
            rng.fillNormal(t.pointer, count: n, std: std)
            return t.array
        }
        let w0 = values(0.5), m0 = values(0.01), g0 = values(2)
        let v0 = values(0.01).map { $0 * $0 }
        for step in [1, 7] {
            var w = w0, m = m0, v = v0
            reference(w: &w, g: g0, m: &m, v: &v, lr: 3e-4, clip: 0.7, step: step, s: settings)
            for threads in [1, 2, 3] {
                let p = Parameter(name: "p", shape: [n])
                p.value.copy(from: Tensor(shape: [n], values: w0))
                p.grad.copy(from: Tensor(shape: [n], values: g0))
                p.m.copy(from: Tensor(shape: [n], values: m0))
                p.v.copy(from: Tensor(shape: [n], values: v0))
                Adam.update(p, learningRate: 3e-4, clipScale: 0.7, step: step, settings: settings, threads: threads)
                XCTAssertEqual(p.value.array.map(\.bitPattern), w.map(\.bitPattern), "weights, step \(step), \(threads) threads")
                XCTAssertEqual(p.m.array.map(\.bitPattern), m.map(\.bitPattern), "m, step \(step), \(threads) threads")
                XCTAssertEqual(p.v.array.map(\.bitPattern), v.map(\.bitPattern), "v, step \(step), \(threads) threads")
                XCTAssertTrue(p.grad.array.allSatisfy { $0.bitPattern == 0 }, "the gradient is zeroed")
                XCTAssertNotEqual(p.value.array.map(\.bitPattern), w0.map(\.bitPattern), "the update moved the weights")
            }
        }
    }

    /// The many-parameter update (one parallel region for all of them, pieces from a counter)
    /// gives each parameter the bits of the scalar definition, for any thread and piece count.
    func testManyParametersInOneRegionMatchTheScalarDefinition() {
        let sizes = [70_005, 3, 8, 40_000, 1]
        let settings = AdamSettings(beta1: 0.9, beta2: 0.98, epsilon: 1e-8, weightDecay: 0)
        var rng = RandomGenerator(seed: 7)
        func values(_ n: Int, _ std: Float) -> [Float] {
            let t = Tensor(shape: [n])
            rng.fillNormal(t.pointer, count: n, std: std)
            return t.array
        }
        let start = sizes.map { n in (w: values(n, 0.5), g: values(n, 2), m: values(n, 0.01), v: values(n, 0.01).map { $0 * $0 }) }
        let expected = start.map { x -> (w: [Float], m: [Float], v: [Float]) in
            var w = x.w, m = x.m, v = x.v
            reference(w: &w, g: x.g, m: &m, v: &v, lr: 1e-3, clip: 0.5, step: 3, s: settings)
            return (w, m, v)
        }
        for (threads, piece) in [(1, 1 << 15), (2, 1 << 15), (3, 1000), (2, 8)] {
            let params = zip(sizes, start).map { n, x -> Parameter in
                let p = Parameter(name: "p\(n)", shape: [n])
                p.value.copy(from: Tensor(shape: [n], values: x.w)); p.grad.copy(from: Tensor(shape: [n], values: x.g))
                p.m.copy(from: Tensor(shape: [n], values: x.m)); p.v.copy(from: Tensor(shape: [n], values: x.v))
                return p
            }
            Adam.update(params, learningRate: 1e-3, clipScale: 0.5, step: 3, settings: settings, threads: threads, piece: piece)
            for (p, e) in zip(params, expected) {
                XCTAssertEqual(p.value.array.map(\.bitPattern), e.w.map(\.bitPattern), "\(p.name), \(threads) threads, pieces of \(piece)")
                XCTAssertEqual(p.m.array.map(\.bitPattern), e.m.map(\.bitPattern), "\(p.name) m")
                XCTAssertEqual(p.v.array.map(\.bitPattern), e.v.map(\.bitPattern), "\(p.name) v")
                XCTAssertTrue(p.grad.array.allSatisfy { $0.bitPattern == 0 }, "\(p.name): the gradient is zeroed")
            }
        }
    }
}
