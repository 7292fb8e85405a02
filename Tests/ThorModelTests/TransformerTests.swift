import XCTest
import ThorTensor
import ThorExperts
import ThorModel

final class TransformerTests: XCTestCase {
    static let pad: Int32 = 0, bos: Int32 = 1, eos: Int32 = 2, cls: Int32 = 3

    func smallConfig(dropout: Float = 0, activation: Activation = .relu) -> TransformerConfiguration {
        TransformerConfiguration(vocabularySize: 11, modelDim: 8, hiddenDim: 12, heads: 2, encoderLayers: 2,
                                 decoderLayers: 2, activation: activation, dropout: dropout, attentionDropout: dropout,
                                 maxPositions: 16, padID: 0)
    }

    /// Two sentence pairs of different lengths (padding on both sides).
    func smallBatch(extraSourcePad: Int = 0, extraTargetPad: Int = 0) -> Seq2SeqBatch {
        let c = Self.cls, e = Self.eos, b = Self.bos
        return Seq2SeqBatch(sources: [[c, 5, 6, 7, e], [c, 8, e]], targets: [[b, 9, 4, e], [b, 10, 5, 6, 7, e]],
                            pad: Self.pad, taskLabels: [0, 1],
                            minSourceLength: 5 + extraSourcePad, minTargetLength: 5 + extraTargetPad)
    }

    func testParameterNamesAreStableAndComplete() throws {
        let m = try Transformer(configuration: smallConfig(), seed: 1)
        let names = m.parameters.map(\.name)
        XCTAssertEqual(names.first, "embedding.weight")
        XCTAssertTrue(names.contains("encoder.layers.0.self_attn.wq"))
        XCTAssertTrue(names.contains("decoder.layers.1.cross_attn.bo"))
        XCTAssertTrue(names.contains("decoder.layers.1.ffn.w2"))
        XCTAssertEqual(names.last, "decoder.norm.bias")
        XCTAssertEqual(Set(names).count, names.count)
        XCTAssertEqual(names, try Transformer(configuration: smallConfig(), seed: 2).parameters.map(\.name))
        // 1 embedding + per enc layer 2+8+2+4 + enc norm 2 + per dec layer 2+8+2+8+2+4 + dec norm 2
        XCTAssertEqual(names.count, 1 + 2 * 16 + 2 + 2 * 26 + 2)
    }

    func testFactorySublayersAreUsedAndTheirParametersListed() throws {
        var asked: [String] = []
        let m = try Transformer(configuration: smallConfig(), seed: 1) { side, i in
            asked.append("\(side.rawValue)\(i)")
            guard side == .decoder && i == 1 else { return nil }
            var g = RandomGenerator(seed: 9)
            return DenseFeedForward(name: "custom", modelDim: 8, hiddenDim: 4, activation: .gelu, rng: &g)
        }
        XCTAssertEqual(asked, ["encoder0", "encoder1", "decoder0", "decoder1"])
        XCTAssertTrue(m.parameters.contains { $0.name == "custom.w1" })
        XCTAssertFalse(m.parameters.contains { $0.name == "decoder.layers.1.ffn.w1" })
    }

    func testRejectsBadInputWithoutChangingState() throws {
        XCTAssertThrowsError(try Transformer(configuration: TransformerConfiguration(vocabularySize: 10, modelDim: 6, heads: 4), seed: 1))
        let m = try Transformer(configuration: smallConfig(), seed: 1)
        var bad = smallBatch()
        bad.source[0] = 99
        XCTAssertThrowsError(try m.forward(bad, training: true)) { e in
            XCTAssertTrue("\(e)".contains("99"), "\(e)")
        }
        XCTAssertThrowsError(try m.backward())
        bad = smallBatch(); bad.targetMask.removeLast()
        XCTAssertThrowsError(try m.forward(bad, training: false))
    }

    /// The whole model's backward against finite differences on sampled entries of every parameter.
    func testWholeModelGradientsMatchFiniteDifferences() throws {
        // GELU: smooth, so finite differences are not fooled by ReLU kinks.
        let m = try Transformer(configuration: smallConfig(activation: .gelu), seed: 3)
        // non-trivial norms/biases so their gradients are exercised
        var g = RandomGenerator(seed: 4)
        for p in m.parameters where p.shape.count == 1 {
            for i in 0..<p.count { p.value[i] += g.normal() * 0.2 }
        }
        let batch = smallBatch()
        m.zeroGradients()
        try m.forward(batch, training: true)
        try m.backward(lossScale: 3)
        let loss = { 3 * (try m.forward(batch, training: false)).lossSum / Double(batch.targetMask.filter { $0 > 0 }.count) }
        for p in m.parameters {
            try checkGradient(p.name, of: p.value, analytic: Tensor(copying: p.grad), eps: 1e-2, tolerance: 3e-2,
                              samples: 6, loss: loss)
        }
    }

    /// With dropout on and the generator rewound before every forward (fixed masks), backward
    /// still matches finite differences: every dropout mask is reused correctly.
    func testWholeModelGradientsWithFixedDropoutMasks() throws {
        let m = try Transformer(configuration: smallConfig(dropout: 0.2, activation: .gelu), seed: 21)
        let batch = smallBatch()
        let start = m.dropoutState
        m.zeroGradients()
        try m.forward(batch, training: true)
        try m.backward()
        let loss = { () throws -> Double in
            m.dropoutState = start
            return try m.forward(batch, training: true).lossSum / 8
        }
        for p in m.parameters where p.name.hasSuffix("wq") || p.name.hasSuffix("w1") || p.name == "embedding.weight" {
            try checkGradient(p.name, of: p.value, analytic: Tensor(copying: p.grad), eps: 1e-2, tolerance: 3e-2,
                              samples: 8, loss: loss)
        }
    }

    func testDropoutIsSeededAndCheckpointable() throws {
        let m = try Transformer(configuration: smallConfig(dropout: 0.2), seed: 5)
        let batch = smallBatch()
        let state = m.dropoutState
        let a = try m.forward(batch, training: true)
        let b = try m.forward(batch, training: true)
        XCTAssertNotEqual(a.loss, b.loss, "fresh dropout masks each step")
        m.dropoutState = state
        let c = try m.forward(batch, training: true)
        XCTAssertEqual(a.loss.bitPattern, c.loss.bitPattern)
        let e1 = try m.forward(batch, training: false), e2 = try m.forward(batch, training: false)
        XCTAssertEqual(e1.loss.bitPattern, e2.loss.bitPattern, "no dropout in evaluation")
    }

    func testCausalityAndPaddingInvariance() throws {
        let m = try Transformer(configuration: smallConfig(), seed: 6)
        let v = 11
        let base = smallBatch()
        try m.forward(base, training: false)
        let ref = Tensor(copying: m.lastLogits!)
        // Changing a later target input token leaves earlier logits unchanged.
        var changed = base
        changed.targetInput[1 * 5 + 3] = 8   // sentence 1, position 3
        try m.forward(changed, training: false)
        let got = m.lastLogits!
        for p in 0..<3 { for j in 0..<v { XCTAssertEqual(got[(5 + p) * v + j], ref[(5 + p) * v + j], accuracy: 1e-6) } }
        XCTAssertNotEqual(got[(5 + 3) * v], ref[(5 + 3) * v])
        // Extra padding on either side changes nothing for real tokens.
        let padded = smallBatch(extraSourcePad: 3, extraTargetPad: 2)
        let r0 = try m.forward(base, training: false)
        let r1 = try m.forward(padded, training: false)
        XCTAssertEqual(r0.tokenCount, r1.tokenCount)
        XCTAssertEqual(r0.loss, r1.loss, accuracy: 1e-5)
        let pl = m.lastLogits!
        for b in 0..<2 {
            for t in 0..<5 where base.targetMask[b * 5 + t] > 0 {
                for j in 0..<v { XCTAssertEqual(pl[(b * 7 + t) * v + j], ref[(b * 5 + t) * v + j], accuracy: 1e-5) }
            }
        }
    }

    /// Incremental decoding with caches reproduces the full forward pass; reorder moves rows.
    func testIncrementalDecodingEqualsFullForward() throws {
        let m = try Transformer(configuration: smallConfig(), seed: 7)
        let batch = smallBatch()
        try m.forward(batch, training: false)
        let full = m.lastLogits!
        let enc = try m.encode(batch)
        let cache = try m.makeCache(for: enc, maxLength: 5)
        let v = 11
        var worst: Float = 0
        for step in 0..<5 {
            let tokens = (0..<2).map { batch.targetInput[$0 * 5 + step] }
            let logits = try m.decodeStep(tokens, cache: cache)
            for b in 0..<2 where batch.targetMask[b * 5 + step] > 0 {
                worst = max(worst, Kernels.maxAbsDifference(logits.pointer + b * v, full.pointer + (b * 5 + step) * v, count: v))
            }
        }
        XCTAssertLessThanOrEqual(worst, 1e-5)
        // Swapping rows of the cache swaps the next step's logits.
        let c2 = try m.makeCache(for: enc, maxLength: 5)
        let first = try m.decodeStep([Self.bos, Self.bos], cache: c2)
        try m.reorder(c2, by: [1, 0])
        let next = try m.decodeStep([9, 9], cache: c2)
        let c3 = try m.makeCache(for: enc, maxLength: 5)
        _ = try m.decodeStep([Self.bos, Self.bos], cache: c3)
        let ref = try m.decodeStep([9, 9], cache: c3)
        XCTAssertEqual(Kernels.maxAbsDifference(next.pointer, ref.pointer + v, count: v), 0)
        XCTAssertEqual(Kernels.maxAbsDifference(next.pointer + v, ref.pointer, count: v), 0)
        XCTAssertEqual(first.shape, [2, v])
        XCTAssertThrowsError(try m.reorder(c2, by: [2]))
    }

    /// Reorder also moves the FFN sublayers' incremental state.
    func testReorderMovesIncrementalStateTensors() throws {
        let probe = StateProbe()
        let m = try Transformer(configuration: smallConfig(), seed: 8) { side, _ in side == .decoder ? probe : nil }
        let enc = try m.encode(smallBatch())
        let cache = try m.makeCache(for: enc, maxLength: 4)
        _ = try m.decodeStep([Self.bos, Self.bos], cache: cache)
        try m.reorder(cache, by: [1, 1, 0])
        let t = try XCTUnwrap(cache.layers[0].feedForwardState as? StateProbe.State).rows
        XCTAssertEqual(t.shape, [3, 1])
        XCTAssertEqual(t.array, [1, 1, 0])
        _ = try m.decodeStep([5, 5, 5], cache: cache)
        XCTAssertEqual(probe.lastStart, 1)
        // Beam search grows the batch from B to B·beam rows; the state must follow every step.
        _ = try m.beamSearch(enc, beamSize: 3, bos: Self.bos, eos: Self.eos, maxLength: 4)
        XCTAssertEqual(probe.lastRows, 6)
        XCTAssertFalse(probe.sawMismatch, "IncrementalState rows out of step with the batch")
    }

    /// The dense model learns to reverse short sequences and greedy/beam decoding reproduce them.
    func testLearnsReversalAndDecodesIt() throws {
        let config = TransformerConfiguration(vocabularySize: 12, modelDim: 32, hiddenDim: 64, heads: 4,
                                              encoderLayers: 1, decoderLayers: 1, activation: .relu,
                                              dropout: 0, attentionDropout: 0, maxPositions: 16, padID: 0)
        let m = try Transformer(configuration: config, seed: 11)
        m.labelSmoothing = 0
        var g = RandomGenerator(seed: 12)
        func sample(_ n: Int) -> ([[Int32]], [[Int32]]) {
            var s: [[Int32]] = [], t: [[Int32]] = []
            for _ in 0..<n {
                let len = 2 + g.nextInt(below: 4)
                let w = (0..<len).map { _ in Int32(4 + g.nextInt(below: 8)) }
                s.append([Self.cls] + w + [Self.eos]); t.append([Self.bos] + w.reversed() + [Self.eos])
            }
            return (s, t)
        }
        var step = 0
        var last: Float = .infinity
        for _ in 0..<700 {
            step += 1
            let (s, t) = sample(32)
            let batch = Seq2SeqBatch(sources: s, targets: t, pad: Self.pad)
            m.zeroGradients()
            last = try m.forward(batch, training: true).loss
            try m.backward()
            let lr = Adam.inverseSquareRootRate(peak: 3e-3, warmup: 50, step: step)
            for p in m.parameters { Adam.update(p, learningRate: lr, clipScale: 1, step: step, settings: AdamSettings()) }
        }
        XCTAssertLessThan(last, 0.05, "training loss after \(step) steps")
        let (s, t) = sample(16)
        let test = Seq2SeqBatch(sources: s, targets: t, pad: Self.pad)
        let enc = try m.encode(test)
        let greedy = try m.greedyDecode(enc, bos: Self.bos, eos: Self.eos, maxLength: 10)
        let expected = t.map { Array($0.dropFirst().dropLast()) }
        XCTAssertEqual(greedy, expected)
        let beam1 = try m.beamSearch(enc, beamSize: 1, bos: Self.bos, eos: Self.eos, maxLength: 10)
        XCTAssertEqual(beam1, greedy)
        let beam4 = try m.beamSearch(enc, beamSize: 4, lengthPenalty: 1, bos: Self.bos, eos: Self.eos, maxLength: 10)
        XCTAssertEqual(beam4, expected)
    }

    /// Beam 1 equals greedy on an untrained model too (where ties and long outputs are likely).
    func testBeamOneEqualsGreedyUntrained() throws {
        let m = try Transformer(configuration: smallConfig(), seed: 13)
        let enc = try m.encode(smallBatch())
        let greedy = try m.greedyDecode(enc, bos: Self.bos, eos: Self.eos, maxLength: 12)
        XCTAssertEqual(try m.beamSearch(enc, beamSize: 1, bos: Self.bos, eos: Self.eos, maxLength: 12), greedy)
        let b3 = try m.beamSearch(enc, beamSize: 3, bos: Self.bos, eos: Self.eos, maxLength: 12)
        XCTAssertEqual(b3.count, 2)
        XCTAssertTrue(b3.allSatisfy { $0.count <= 12 && !$0.contains(Self.eos) })
    }
}

/// An FFN sublayer (zero output) whose incremental state records each row's original index.
final class StateProbe: FeedForwardSublayer {
    final class State: IncrementalState {
        var rows: Tensor
        init(batchSize: Int) { rows = Tensor(shape: [batchSize, 1], values: (0..<batchSize).map(Float.init)) }
        func reorder(_ r: [Int]) { rows = Tensor(shape: [r.count, 1], values: r.map { rows[$0] }) }
    }
    var lastStart = -1, lastRows = 0, sawMismatch = false
    var parameters: [Parameter] { [] }
    func makeIncrementalState(batchSize: Int) -> IncrementalState? { State(batchSize: batchSize) }
    func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor {
        if let s = layout.state {
            lastStart = layout.startPosition; lastRows = layout.batchSize
            guard let st = s as? State else { throw TransformerError.invalidArgument("foreign state") }
            if st.rows.shape[0] != layout.batchSize { sawMismatch = true }
        }
        return Tensor(shape: x.shape)
    }
    func backward(_ gradOutput: Tensor) throws -> SublayerGradients { SublayerGradients(input: Tensor(shape: gradOutput.shape)) }
}
