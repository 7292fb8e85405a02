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

    /// An expert worker keeps its last 4 replies, and with them the tensors of its last calls (to
    /// answer a resent request). Storage is still reused from step to step (two blocks in turn per
    /// kind of call, not fresh pages every step), held tensors are never overwritten, and the
    /// results are those of a host whose caller holds nothing.
    func testStorageIsReusedWhileTheLastRepliesAreStillHeld() throws {
        let keys = (0..<3).map { ExpertKey(layer: 0, expert: $0) }
        let host = ExpertHost(spec: spec, keys: keys, threads: 2)
        let reference = ExpertHost(spec: spec, keys: keys, threads: 2)
        let rows = [3000, 200, 70]   // blocks of about 1 MB: the allocator maps them on their own
        var held: [(tensors: [Tensor], copies: [Tensor])] = []
        func hold(_ tensors: [Tensor]) {
            held.append((tensors, tensors.map { Tensor(copying: $0) }))
            while held.count > 4 {
                let (t, c) = held.removeFirst()
                for (a, b) in zip(t, c) { XCTAssertTrue(a.bitwiseEqual(b), "a held reply's tensor was overwritten") }
            }
        }
        var outputs: [Int] = [], gradients: [Int] = []
        var filler: [Tensor] = []
        for step in 1...6 {
            let x = batches(rows, seed: UInt64(step)), dy = batches(rows, seed: UInt64(50 + step), std: 0.1)
            let y = try host.forward(layer: 0, batches: x, training: true)
            assertBitwiseEqual(y, try reference.forward(layer: 0, batches: x, training: true), "forward, step \(step)")
            hold(y)
            outputs.append(Int(bitPattern: y[0].pointer))
            let dx = try host.backward(layer: 0, gradients: dy)
            assertBitwiseEqual(dx, try reference.backward(layer: 0, gradients: dy), "backward, step \(step)")
            hold(dx)
            gradients.append(Int(bitPattern: dx[0].pointer))
            hold([])   // an Ack
            // Storage released by the host would go back to the allocator: take it, so that only
            // storage the host kept can come back at the same address.
            let n = rows.reduce(0, +)
            filler = [Tensor(shape: [n * (8 + 40 + 40)]), Tensor(shape: [n * (8 + 40)])]   // y, h, a and ∂x, ∂h
        }
        blackHole(filler)
        for s in 2..<6 {
            XCTAssertEqual(outputs[s], outputs[s - 2], "forward of step \(s + 1) reuses step \(s - 1)'s storage")
            XCTAssertEqual(gradients[s], gradients[s - 2], "backward of step \(s + 1) reuses step \(s - 1)'s storage")
        }
        XCTAssertNotEqual(outputs[0], outputs[1], "the previous step's outputs are held: the other block")
        XCTAssertNotEqual(gradients[0], gradients[1])
        XCTAssertEqual(host.squaredGradientNorms(), reference.squaredGradientNorms())
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

private func assertBitwiseEqual(_ a: [Tensor], _ b: [Tensor], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, what, file: file, line: line)
    for (x, y) in zip(a, b) { XCTAssertTrue(x.bitwiseEqual(y), what, file: file, line: line) }
}

@inline(never) private func blackHole<T>(_ value: T) { withExtendedLifetime(value) {} }
