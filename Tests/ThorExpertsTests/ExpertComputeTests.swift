import XCTest
import ThorTensor
import ThorExperts

/// Expert compute cut into fixed row chunks and gradient tiles (`ExpertPartition`): the bits
/// never depend on the thread count, and the values are the plain FFN's.
final class ExpertComputeTests: XCTestCase {
    func randomTensor(_ shape: [Int], seed: UInt64, std: Float = 1) -> Tensor {
        let t = Tensor(shape: shape)
        var g = RandomGenerator(seed: seed)
        g.fillNormal(t.pointer, count: t.count, std: std)
        return t
    }

    /// One expert gets most tokens (several row chunks), others a few or none.
    let skewedRows = [1100, 40, 3, 0, 57]

    /// Two training steps (forward, backward, Adam) on a host; everything it returned and holds.
    func run(threads: Int, activation: Activation, partition: ExpertPartition = .standard)
        throws -> (outputs: [Tensor], state: [ExpertKey: [String: Tensor]]) {
        let spec = ExpertSpec(modelDim: 16, hiddenDim: 600, activation: activation, seed: 3)
        let keys = (0..<skewedRows.count).map { ExpertKey(layer: 0, expert: $0) }
        let host = ExpertHost(spec: spec, keys: keys, threads: threads, partition: partition)
        var outputs: [Tensor] = []
        for step in 1...2 {
            let x = skewedRows.enumerated().map { ExpertBatch(expert: $0.offset, tokens: randomTensor([$0.element, 16], seed: UInt64(10 * step + $0.offset))) }
            let dy = skewedRows.enumerated().map { ExpertBatch(expert: $0.offset, tokens: randomTensor([$0.element, 16], seed: UInt64(100 * step + $0.offset), std: 0.1)) }
            outputs += try host.forward(layer: 0, batches: x, training: true)
            outputs += try host.backward(layer: 0, gradients: dy)
            host.step(learningRate: 1e-2, clipScale: 0.5, step: step)
        }
        return (outputs, host.exportState())
    }

    func assertSameBits(_ a: (outputs: [Tensor], state: [ExpertKey: [String: Tensor]]),
                        _ b: (outputs: [Tensor], state: [ExpertKey: [String: Tensor]]), _ what: String) {
        XCTAssertEqual(a.outputs.count, b.outputs.count, what)
        for (i, (p, q)) in zip(a.outputs, b.outputs).enumerated() { XCTAssertTrue(p.bitwiseEqual(q), "\(what): output \(i)") }
        XCTAssertEqual(Set(a.state.keys), Set(b.state.keys), what)
        for (k, tensors) in a.state {
            for (name, t) in tensors { XCTAssertTrue(t.bitwiseEqual(b.state[k]![name]!), "\(what): \(name)") }
        }
    }

    /// 1, 2 and 3 expert threads give the same outputs, input gradients, weights and Adam moments,
    /// bit for bit, when one expert gets most of the tokens (its chunks spread over the threads).
    func testThreadCountDoesNotChangeBitsWithSkewedRouting() throws {
        for activation in [Activation.relu, .swiglu] {
            let one = try run(threads: 1, activation: activation)
            assertSameBits(try run(threads: 2, activation: activation), one, "\(activation) 2 threads vs 1")
            assertSameBits(try run(threads: 3, activation: activation), one, "\(activation) 3 threads vs 1")
        }
    }

    /// Chunked forward and backward compute the FFN: outputs, input gradients and parameter
    /// gradients match `FeedForwardWeights` (the finite-difference-checked kernel) run on the
    /// whole batch at once, for any partition.
    func testChunkedComputeMatchesWholeBatchFeedForward() throws {
        for activation in Activation.allCases {
            for partition in [ExpertPartition.standard, ExpertPartition(rowsPerChunk: 7, columnsPerTile: 5)] {
                let spec = ExpertSpec(modelDim: 8, hiddenDim: 12, activation: activation, seed: 4)
                let key = ExpertKey(layer: 1, expert: 0)
                let host = ExpertHost(spec: spec, keys: [key], threads: 2, partition: partition)
                let reference = Expert(key: key, spec: spec)
                let x = randomTensor([300, 8], seed: 1), dy = randomTensor([300, 8], seed: 2, std: 0.1)
                let y = try host.forward(layer: 1, batches: [ExpertBatch(expert: 0, tokens: x)], training: true)[0]
                let dx = try host.backward(layer: 1, gradients: [ExpertBatch(expert: 0, tokens: dy)])[0]
                let (yr, kept) = reference.forward(x, keep: true)
                let dxr = reference.backward(dy, kept!)
                let what = "\(activation) \(partition)"
                assertClose(y, yr, what + " y")
                assertClose(dx, dxr, what + " dx")
                for (p, q) in zip(host.experts[key]!.parameters, reference.parameters) { assertClose(p.grad, q.grad, what + " " + p.name) }
            }
        }
    }

    /// Row chunks of up to 4 full 256-row units (the standard partition with SkylakeX kernels),
    /// the short last unit alone.
    func testRowChunksMergeFullUnitsAndKeepTheShortLastUnitAlone() {
        let p = ExpertPartition(rowsPerChunk: 256, columnsPerTile: 256, unitsPerChunk: 4)
        XCTAssertEqual(ExpertPartition.standard.unitsPerChunk, BLASCore.same(BLASCore.loaded, "SkylakeX") ? 4 : 1)
        XCTAssertEqual(p.rowChunks(0), [])
        XCTAssertEqual(p.rowChunks(3), [0..<3])
        XCTAssertEqual(p.rowChunks(256), [0..<256])
        XCTAssertEqual(p.rowChunks(257), [0..<256, 256..<257])
        XCTAssertEqual(p.rowChunks(1300), [0..<1024, 1024..<1280, 1280..<1300])
        XCTAssertEqual(p.rowChunks(2048), [0..<1024, 1024..<2048])
        XCTAssertEqual(ExpertPartition(rowsPerChunk: 7, columnsPerTile: 5).rowChunks(16), [0..<7, 7..<14, 14..<16])
    }

    /// The standard partition (with SkylakeX kernels: full 256-row units merged into calls of up
    /// to 1,024 rows) gives the bits of one call per unit, at both benchmark expert shapes, with
    /// tails of 1–3 rows (OpenBLAS's small-matrix kernel) and longer ones.
    func testMergedRowChunksGiveTheBitsOfSingleUnitChunks() throws {
        for (d, f) in [(256, 1024), (512, 2048)] {
            let spec = ExpertSpec(modelDim: d, hiddenDim: f, activation: .relu, seed: 5)
            let rows = [1300, 257, 515, 2, 1027]
            let keys = rows.indices.map { ExpertKey(layer: 0, expert: $0) }
            func run(_ partition: ExpertPartition) throws -> [Tensor] {
                let host = ExpertHost(spec: spec, keys: keys, threads: 2, partition: partition)
                let x = rows.enumerated().map { ExpertBatch(expert: $0.offset, tokens: randomTensor([$0.element, d], seed: UInt64(20 + $0.offset))) }
                let dy = rows.enumerated().map { ExpertBatch(expert: $0.offset, tokens: randomTensor([$0.element, d], seed: UInt64(40 + $0.offset), std: 0.1)) }
                var out = try host.forward(layer: 0, batches: x, training: true)
                out += try host.backward(layer: 0, gradients: dy)
                for k in keys { out += host.experts[k]!.parameters.map(\.grad) }
                return out
            }
            let merged = try run(.standard)
            let single = try run(ExpertPartition(rowsPerChunk: 256, columnsPerTile: 256, unitsPerChunk: 1))
            XCTAssertEqual(merged.count, single.count)
            for (i, (a, b)) in zip(merged, single).enumerated() {
                XCTAssertTrue(a.bitwiseEqual(b), "d=\(d) d_ff=\(f): tensor \(i) differs between 1,024-row and 256-row chunks")
            }
        }
    }

    func assertClose(_ a: Tensor, _ b: Tensor, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.shape, b.shape, what, file: file, line: line)
        var worst: Float = 0
        for i in 0..<a.count { worst = max(worst, abs(a[i] - b[i]) / max(1, abs(b[i]))) }
        XCTAssertLessThan(worst, 1e-4, what, file: file, line: line)
        XCTAssertGreaterThan((0..<b.count).map { abs(b[$0]) }.max() ?? 0, 0, "\(what): all zero", file: file, line: line)
    }
}
