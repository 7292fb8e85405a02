import XCTest
import ThorTensor
import ThorModel

final class FeedForwardTests: XCTestCase {
    /// Every parameter and the input of the FFN, for one activation, against finite differences.
    func checkFeedForwardBackward(_ act: Activation) throws {
        var rng = RandomGenerator(seed: 11)
        let ffn = DenseFeedForward(name: "ffn", modelDim: 6, hiddenDim: 5, activation: act, rng: &rng)
        rng.fillNormal(ffn.b1.value.pointer, count: ffn.b1.count, std: 0.5)
        rng.fillNormal(ffn.b2.value.pointer, count: ffn.b2.count, std: 0.5)
        let x = randomTensor([4, 6], seed: 12)
        let layout = TokenLayout(side: .encoder, batchSize: 1, length: 4, mask: [1, 1, 1, 1])
        let proj = RandomProjection(shape: [4, 6], seed: 13)
        _ = try ffn.forward(x, layout: layout, training: true)
        let dx = try ffn.backward(proj.weights)
        let loss = { proj.loss(try ffn.forward(x, layout: layout, training: false)) }
        try checkGradient("\(act) x", of: x, analytic: dx, eps: 1e-2, loss: loss)
        for p in ffn.parameters {
            try checkGradient("\(act) \(p.name)", of: p.value, analytic: p.grad, eps: 1e-2, loss: loss)
        }
    }

    func testReLUBackwardMatchesFiniteDifferences() throws { try checkFeedForwardBackward(.relu) }
    func testGELUBackwardMatchesFiniteDifferences() throws { try checkFeedForwardBackward(.gelu) }
    func testSwiGLUBackwardMatchesFiniteDifferences() throws { try checkFeedForwardBackward(.swiglu) }
    func testEveryActivationHasABackwardTest() {
        XCTAssertEqual(Set(Activation.allCases), [.relu, .gelu, .swiglu], "add a backward test for the new activation")
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
