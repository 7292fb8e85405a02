import XCTest
import ThorTensor
import ThorExperts

/// A host reuses its storage from one training step to the next (no new pages per step), but
/// never while a caller still holds an earlier call's outputs.
final class ExpertWorkspaceTests: XCTestCase {
    let spec = ExpertSpec(modelDim: 8, hiddenDim: 40, activation: .relu, seed: 5)

    func batches(_ rows: [Int], seed: UInt64, std: Float = 1) -> [ExpertBatch] {
        rows.enumerated().map { i, n in
            let t = Tensor(shape: [n, 8])
            var g = RandomGenerator(seed: seed + UInt64(i))
            g.fillNormal(t.pointer, count: t.count, std: std)
            return ExpertBatch(expert: i, tokens: t)
        }
    }

    func testTrainingStepsReuseTheSameStorage() throws {
        let host = ExpertHost(spec: spec, keys: (0..<3).map { ExpertKey(layer: 0, expert: $0) }, threads: 2)
        var outputAddresses: [Int] = [], gradientAddresses: [Int] = []
        for step in 1...3 {
            let y = try host.forward(layer: 0, batches: batches([300, 20, 7], seed: UInt64(step)), training: true)
            outputAddresses.append(Int(bitPattern: y[0].pointer))
            let dx = try host.backward(layer: 0, gradients: batches([300, 20, 7], seed: UInt64(50 + step), std: 0.1))
            gradientAddresses.append(Int(bitPattern: dx[0].pointer))
        }
        XCTAssertEqual(Set(outputAddresses).count, 1, "forward outputs of later steps reuse the first step's storage")
        XCTAssertEqual(Set(gradientAddresses).count, 1, "backward outputs of later steps reuse the first step's storage")
    }

    func testOutputsACallerStillHoldsAreNeverOverwritten() throws {
        let host = ExpertHost(spec: spec, keys: (0..<2).map { ExpertKey(layer: 0, expert: $0) }, threads: 2)
        let first = try host.forward(layer: 0, batches: batches([100, 9], seed: 1), training: true)
        let copies = first.map { Tensor(copying: $0) }
        _ = try host.backward(layer: 0, gradients: batches([100, 9], seed: 2, std: 0.1))
        let second = try host.forward(layer: 0, batches: batches([100, 9], seed: 3), training: true)
        for (held, copy) in zip(first, copies) { XCTAssertTrue(held.bitwiseEqual(copy), "held outputs unchanged") }
        XCTAssertNotEqual(Int(bitPattern: first[0].pointer), Int(bitPattern: second[0].pointer))
        // An inference forward between a training forward and its backward leaves the kept activations alone.
        let reference = ExpertHost(spec: spec, keys: (0..<2).map { ExpertKey(layer: 0, expert: $0) }, threads: 2)
        _ = try reference.forward(layer: 0, batches: batches([100, 9], seed: 1), training: true)
        _ = try reference.backward(layer: 0, gradients: batches([100, 9], seed: 2, std: 0.1))
        _ = try reference.forward(layer: 0, batches: batches([100, 9], seed: 3), training: true)
        _ = try host.forward(layer: 0, batches: batches([100, 9], seed: 4), training: false)
        let dx = try host.backward(layer: 0, gradients: batches([100, 9], seed: 5, std: 0.1))
        let dxRef = try reference.backward(layer: 0, gradients: batches([100, 9], seed: 5, std: 0.1))
        for (a, b) in zip(dx, dxRef) { XCTAssertTrue(a.bitwiseEqual(b), "backward after an inference forward") }
    }
}
