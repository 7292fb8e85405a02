import XCTest
import ThorTensor
import ThorExperts

final class ExpertBackendTests: XCTestCase {
    /// A normal random tensor of `shape`.
    func randomTensor(_ shape: [Int], seed: UInt64) -> Tensor {
        let t = Tensor(shape: shape)
        var g = RandomGenerator(seed: seed)
        g.fillNormal(t.pointer, count: t.count, std: 1)
        return t
    }

    /// An expert and a dense FFN built from the same seed stream hold the same weights and
    /// compute the same outputs and gradients, bit for bit (one parameter code path).
    func testExpertMatchesFeedForwardWeightsFromTheSameStream() throws {
        for act in Activation.allCases {
            let spec = ExpertSpec(modelDim: 4, hiddenDim: 6, activation: act, seed: 9)
            let key = ExpertKey(layer: 2, expert: 3)
            let expert = Expert(key: key, spec: spec)
            var rng = RandomGenerator(seed: 9, stream: [0xE0, 2, 3])
            let ffn = FeedForwardWeights(name: "ffn", modelDim: 4, hiddenDim: 6, activation: act, rng: &rng)
            XCTAssertEqual(expert.parameters.map(\.name), ["w1", "b1", "w2", "b2"].map { "moe.2.experts.3.\($0)" })
            XCTAssertEqual(expert.w1.value.shape, [4, act.firstProjectionWidth(dFF: 6)])
            for (p, q) in zip(expert.parameters, ffn.parameters) { XCTAssertTrue(p.value.bitwiseEqual(q.value), "\(act) \(p.name)") }
            let x = randomTensor([3, 4], seed: 1), dy = randomTensor([3, 4], seed: 2)
            let (ye, ke) = expert.forward(x, keep: true), (yf, kf) = ffn.forward(x, keep: true)
            XCTAssertTrue(ye.bitwiseEqual(yf))
            XCTAssertTrue(expert.backward(dy, ke!).bitwiseEqual(ffn.backward(dy, kf!)))
            for (p, q) in zip(expert.parameters, ffn.parameters) { XCTAssertTrue(p.grad.bitwiseEqual(q.grad), "\(act) \(p.name) grad") }
            XCTAssertGreaterThan(expert.squaredGradientNorm(), 0)
        }
    }

    /// The in-process expert backend keeps activations per layer and rejects mismatched backward calls.
    func testExpertBackendRejectsMismatchedBackwardAndKeepsState() throws {
        let spec = ExpertSpec(modelDim: 4, hiddenDim: 8, activation: .relu, seed: 5)
        let backend = InProcessExpertBackend(spec: spec, keys: [ExpertKey(layer: 0, expert: 0), ExpertKey(layer: 0, expert: 1)])
        let x = randomTensor([3, 4], seed: 1)
        XCTAssertThrowsError(try backend.backward(layer: 0, gradients: [ExpertBatch(expert: 0, tokens: x)]))
        _ = try backend.forward(layer: 0, batches: [ExpertBatch(expert: 1, tokens: x)], training: true)
        XCTAssertThrowsError(try backend.backward(layer: 0, gradients: [ExpertBatch(expert: 0, tokens: x)]))
        XCTAssertThrowsError(try backend.forward(layer: 0, batches: [ExpertBatch(expert: 7, tokens: x)], training: true))
        let dx = try backend.backward(layer: 0, gradients: [ExpertBatch(expert: 1, tokens: x)])
        XCTAssertEqual(dx[0].shape, [3, 4])
        let norms = try backend.squaredGradientNorms()
        XCTAssertEqual(norms[ExpertKey(layer: 0, expert: 0)], 0)
        XCTAssertGreaterThan(norms[ExpertKey(layer: 0, expert: 1)]!, 0)
    }

    /// Export → import into a fresh backend gives the same outputs bit for bit.
    func testExpertStateRoundTrip() throws {
        let spec = ExpertSpec(modelDim: 4, hiddenDim: 8, activation: .swiglu, seed: 5)
        let keys = [ExpertKey(layer: 1, expert: 2)]
        let a = InProcessExpertBackend(spec: spec, keys: keys)
        let x = randomTensor([3, 4], seed: 1)
        _ = try a.forward(layer: 1, batches: [ExpertBatch(expert: 2, tokens: x)], training: true)
        _ = try a.backward(layer: 1, gradients: [ExpertBatch(expert: 2, tokens: x)])
        try a.step(learningRate: 0.1, clipScale: 1, step: 1)
        let b = InProcessExpertBackend(spec: ExpertSpec(modelDim: 4, hiddenDim: 8, activation: .swiglu, seed: 99), keys: keys)
        try b.importState(try a.exportState())
        let ya = try a.forward(layer: 1, batches: [ExpertBatch(expert: 2, tokens: x)], training: false)
        let yb = try b.forward(layer: 1, batches: [ExpertBatch(expert: 2, tokens: x)], training: false)
        XCTAssertTrue(ya[0].bitwiseEqual(yb[0]))
        var bad = try a.exportState()
        bad[keys[0]]!["moe.1.experts.2.w1"] = Tensor(shape: [2, 2])
        XCTAssertThrowsError(try b.importState(bad))
        let yc = try b.forward(layer: 1, batches: [ExpertBatch(expert: 2, tokens: x)], training: false)
        XCTAssertTrue(ya[0].bitwiseEqual(yc[0]), "a rejected import must change nothing")
    }
}
