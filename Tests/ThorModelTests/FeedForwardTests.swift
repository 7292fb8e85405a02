import XCTest
import ThorTensor
import ThorExperts
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
        let dx = try ffn.backward(proj.weights).input
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
}
