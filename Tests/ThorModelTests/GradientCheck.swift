import XCTest
import ThorTensor
import ThorExperts

/// Central finite differences against a hand-written backward.
///
/// `loss()` must recompute the scalar loss from the current contents of the
/// tensors being checked (it is called with one entry nudged by ±eps).
/// Compares `analytic` entry by entry with relative tolerance; checks at most
/// `samples` entries (spread over the tensor) to keep tests fast.
func checkGradient(
    _ name: String, of tensor: Tensor, analytic: Tensor,
    eps: Float = 1e-2, tolerance: Float = 2e-2, samples: Int = 24,
    file: StaticString = #filePath, line: UInt = #line,
    loss: () throws -> Double
) rethrows {
    precondition(tensor.count == analytic.count)
    let n = tensor.count
    guard n > 0 else { return }
    let stride = max(1, n / samples)
    var worst: Float = 0, worstAt = -1
    var i = 0
    while i < n {
        let original = tensor[i]
        tensor[i] = original + eps
        let plus = try loss()
        tensor[i] = original - eps
        let minus = try loss()
        tensor[i] = original
        let numeric = Float((plus - minus) / Double(2 * eps))
        let a = analytic[i]
        let err = abs(numeric - a) / max(1e-2, abs(numeric) + abs(a))
        if err > worst { worst = err; worstAt = i }
        XCTAssertLessThanOrEqual(err, tolerance,
            "\(name)[\(i)]: analytic \(a) vs numeric \(numeric)", file: file, line: line)
        i += stride
    }
    _ = worstAt
}

/// A fixed random projection `Σ y ⊙ r` used as a scalar loss in layer tests;
/// its gradient with respect to `y` is `r`.
struct RandomProjection {
    let weights: Tensor
    init(shape: [Int], seed: UInt64) {
        weights = Tensor(shape: shape)
        var g = RandomGenerator(seed: seed)
        g.fillNormal(weights.pointer, count: weights.count, std: 1)
    }
    func loss(_ y: Tensor) -> Double {
        var s = 0.0
        for i in 0..<y.count { s += Double(y[i]) * Double(weights[i]) }
        return s
    }
}

func randomTensor(_ shape: [Int], seed: UInt64, std: Float = 1) -> Tensor {
    let t = Tensor(shape: shape)
    var g = RandomGenerator(seed: seed)
    g.fillNormal(t.pointer, count: t.count, std: std)
    return t
}
