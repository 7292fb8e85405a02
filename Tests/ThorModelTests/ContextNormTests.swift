import XCTest
import ThorTensor
import ThorExperts
import ThorModel

/// `routing.context_norm = match-state` (`ContextNorm`): the kernel's values and its backward
/// against finite differences; the layer-level checks are in MoEGradientTests, the decoding
/// checks in ThorModelDecodingTests / PrefixLMTests, the configuration errors in ConfigurationTests.
final class ContextNormTests: XCTestCase {
    let n = 5, d = 7

    func forward(_ h: Tensor, _ u: Tensor) -> (y: Tensor, a: Tensor, b: Tensor) {
        let y = Tensor(shape: [n, d]), a = Tensor(shape: [n]), b = Tensor(shape: [n])
        ContextNorm.matchStateForward(h: h.pointer, u: u.pointer, rows: n, dim: d, y: y.pointer,
                                      stateNorm: a.pointer, mixNorm: b.pointer)
        return (y, a, b)
    }

    /// Each output row has the state's length and the mix's direction; a zero row stays zero.
    func testRescaledRowHasTheStateLengthAndTheMixDirection() {
        let h = randomTensor([n, d], seed: 1, std: 2), u = randomTensor([n, d], seed: 2, std: 0.5)
        for j in 0..<d { u[3 * d + j] = 0 }
        let (y, a, _) = forward(h, u)
        for t in 0..<n {
            let hn = Kernels.sumOfSquares(h.pointer + t * d, count: d).squareRoot()
            let yn = Kernels.sumOfSquares(y.pointer + t * d, count: d).squareRoot()
            XCTAssertEqual(Double(a[t]), hn, accuracy: 1e-4 * hn)
            if t == 3 {
                XCTAssertEqual(yn, 0, "a zero mix stays zero (ε keeps it finite)")
                continue
            }
            XCTAssertEqual(yn, hn, accuracy: 1e-4 * hn, "row \(t): ‖y‖ = ‖h‖")
            var dot = 0.0
            let un = Kernels.sumOfSquares(u.pointer + t * d, count: d).squareRoot()
            for j in 0..<d { dot += Double(y[t * d + j]) * Double(u[t * d + j]) }
            XCTAssertEqual(dot / (yn * un), 1, accuracy: 1e-5, "row \(t): y points along u")
        }
    }

    /// ∂L/∂u and ∂L/∂h of `L = Σ w ⊙ y` against central differences (Double loss).
    func testBackwardMatchesFiniteDifferences() throws {
        let h = randomTensor([n, d], seed: 3, std: 1.5), u = randomTensor([n, d], seed: 4, std: 0.7)
        let w = RandomProjection(shape: [n, d], seed: 5)
        let (_, a, b) = forward(h, u)
        let du = Tensor(shape: [n, d]), dh = randomTensor([n, d], seed: 6)   // dh accumulates
        let dh0 = Tensor(copying: dh)
        ContextNorm.matchStateBackward(dy: w.weights.pointer, h: h.pointer, u: u.pointer, stateNorm: a.pointer,
                                       mixNorm: b.pointer, rows: n, dim: d, du: du.pointer, dh: dh.pointer)
        let dhAdded = Tensor(shape: [n, d])
        for i in 0..<dh.count { dhAdded[i] = dh[i] - dh0[i] }
        let loss = { self.forward(h, u).y }
        checkGradient("match-state du", of: u, analytic: du, eps: 1e-2, samples: n * d) { w.loss(loss()) }
        checkGradient("match-state dh", of: h, analytic: dhAdded, eps: 1e-2, samples: n * d) { w.loss(loss()) }
    }

    /// The same bits whatever the number of rows in a call (an incremental step routes fewer rows).
    func testRowsAreIndependent() {
        let h = randomTensor([n, d], seed: 7), u = randomTensor([n, d], seed: 8)
        let (y, _, _) = forward(h, u)
        for t in 0..<n {
            let y1 = Tensor(shape: [1, d]), a1 = Tensor(shape: [1]), b1 = Tensor(shape: [1])
            ContextNorm.matchStateForward(h: h.pointer + t * d, u: u.pointer + t * d, rows: 1, dim: d, y: y1.pointer,
                                          stateNorm: a1.pointer, mixNorm: b1.pointer)
            for j in 0..<d { XCTAssertEqual(y1[j].bitPattern, y[t * d + j].bitPattern, "row \(t)") }
        }
    }
}
