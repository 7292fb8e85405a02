import XCTest
import ThorTensor
import ThorExperts
import ThorModel

final class MoEIncrementalTests: XCTestCase {
    /// A decoder MoE layer fed one position at a time (running prefix context in its
    /// MoEDecodingState) gives the full pass's output, in every variant.
    func checkIncrementalDecoderMatchesFullPass(_ v: RoutingVariant) throws {
        var r = RoutingConfiguration(variant: v, experts: 4, candidates: 2, threshold: 0.6, moeEvery: 1, sharedExperts: 1, tasks: 3)
        if v == .thorTopK { r.taskPrior = false }   // the hard-mask ablation; the others use the default product
        let h = try MoEHarness(routing: r)
        let dec = h.layers[2]
        let b = 2, len = 5, d = h.d
        let x = randomTensor([b * len, d], seed: 77)
        let mask: [Float] = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
        // The task level (inference) computes r on the encoder input.
        let rep = try h.stack.taskLevel?.forward(h.xEnc1, layout: h.encLayout, training: false)
        let full = try dec.forward(x, layout: TokenLayout(side: .decoder, batchSize: b, length: len, mask: mask, taskLabels: [2, 0],
                                                          taskRepresentation: rep),
                                   training: false)
        let fullDecisions = (0..<(b * len)).map { dec.lastDecision!.selected($0) }
        let state = dec.makeIncrementalState(batchSize: b)
        XCTAssertTrue(state is MoEDecodingState)
        for t in 0..<len {
            let xt = Tensor(shape: [b, d])
            for s in 0..<b { (xt.pointer + s * d).update(from: x.pointer + (s * len + t) * d, count: d) }
            let lay = TokenLayout(side: .decoder, batchSize: b, length: 1, mask: [mask[t], mask[len + t]],
                                  startPosition: t, state: state, taskLabels: [2, 0], taskRepresentation: rep)
            let yt = try dec.forward(xt, layout: lay, training: false)
            for s in 0..<b where mask[s * len + t] != 0 {
                XCTAssertEqual(dec.lastDecision!.selected(s), fullDecisions[s * len + t], "\(v) sentence \(s) step \(t) selection")
                for j in 0..<d {
                    XCTAssertEqual(yt[s * d + j], full[(s * len + t) * d + j], accuracy: 1e-5, "\(v) sentence \(s) step \(t)")
                }
            }
        }
    }

    func testIncrementalTop1() throws { try checkIncrementalDecoderMatchesFullPass(.top1) }
    func testIncrementalTop2() throws { try checkIncrementalDecoderMatchesFullPass(.top2) }
    func testIncrementalTopP() throws { try checkIncrementalDecoderMatchesFullPass(.topp) }
    func testIncrementalThorTopK() throws { try checkIncrementalDecoderMatchesFullPass(.thorTopK) }
    func testIncrementalThorTopP() throws { try checkIncrementalDecoderMatchesFullPass(.thorTopP) }
    func testIncrementalNoTaskLevel() throws { try checkIncrementalDecoderMatchesFullPass(.noTaskLevel) }
    func testIncrementalNoContext() throws { try checkIncrementalDecoderMatchesFullPass(.noContext) }
    func testIncrementalGold() throws { try checkIncrementalDecoderMatchesFullPass(.gold) }
    func testIncrementalNonMixed() throws { try checkIncrementalDecoderMatchesFullPass(.nonMixed) }
    func testIncrementalInfuse() throws { try checkIncrementalDecoderMatchesFullPass(.infuse) }
    func testIncrementalHard() throws { try checkIncrementalDecoderMatchesFullPass(.hard) }
    func testEveryMoEVariantHasAnIncrementalTest() {
        let covered: Set<RoutingVariant> = [.top1, .top2, .topp, .thorTopK, .thorTopP, .noTaskLevel, .noContext, .gold, .nonMixed, .infuse, .hard]
        XCTAssertEqual(covered, Set(RoutingVariant.allCases.filter { $0 != .dense }), "add a testIncremental… method for the new variant")
    }

    /// Combine order is fixed: the output does not depend on the expert-thread count, and
    /// two identical layers give bit-identical results.
    func testOutputIsBitIdenticalAcrossExpertThreads() throws {
        let model = TransformerConfiguration(vocabularySize: 10, modelDim: 8, hiddenDim: 6, heads: 2, encoderLayers: 2, decoderLayers: 1)
        let routing = RoutingConfiguration(variant: .thorTopP, experts: 6, threshold: 0.7, moeEvery: 1, tasks: 2)
        var outs: [Tensor] = []
        for threads in [1, 2] {
            let backend = InProcessExpertBackend(spec: MoEStack.expertSpec(model: model, seed: 3),
                                                 keys: MoEStack.expertKeys(model: model, routing: routing), threads: threads)
            let stack = try MoEStack(model: model, routing: routing, losses: LossConfiguration(), backend: backend, seed: 3)
            let x = randomTensor([3 * 7, 8], seed: 9)
            var lay = TokenLayout(side: .encoder, batchSize: 3, length: 7, mask: Array(repeating: 1, count: 21), taskLabels: [0, 1, 1])
            lay.taskRepresentation = try stack.taskLevel?.forward(x, layout: lay, training: true)
            outs.append(try stack.layers[0].forward(x, layout: lay, training: true))
        }
        XCTAssertTrue(outs[0].bitwiseEqual(outs[1]))
    }

    /// Bad calls fail with a clear error: a layer without the task representation, missing or
    /// out-of-range labels, a backward without a forward, a foreign decoding state.
    func testErrorsForMissingTaskRepresentationAndLabels() throws {
        let h = try MoEHarness(routing: RoutingConfiguration(variant: .thorTopK, experts: 4, moeEvery: 1, tasks: 3))
        let tl = try XCTUnwrap(h.stack.taskLevel)
        for (layer, x, layout) in [(h.layers[0], h.xEnc1, h.encLayout), (h.layers[2], h.xDec, h.decLayout)] {
            XCTAssertThrowsError(try layer.forward(x, layout: layout, training: false)) { e in
                guard case MoEError.taskLevelNotComputed(let why) = e else { return XCTFail("\(e)") }
                XCTAssertTrue(why.contains("task representation r"), why)
            }
        }
        var wrongRows = h.decLayout; wrongRows.taskRepresentation = Tensor(shape: [3, h.d])
        XCTAssertThrowsError(try h.layers[2].forward(h.xDec, layout: wrongRows, training: false))
        var noLabels = h.encLayout; noLabels.taskLabels = nil
        XCTAssertThrowsError(try tl.forward(h.xEnc1, layout: noLabels, training: true))
        noLabels.taskRepresentation = try tl.forward(h.xEnc1, layout: noLabels, training: false)
        XCTAssertNoThrow(try h.layers[0].forward(h.xEnc1, layout: noLabels, training: false))
        XCTAssertThrowsError(try h.layers[1].backward(h.xEnc2))
        XCTAssertThrowsError(try tl.backward(representationGradient: Tensor(shape: [h.b, h.d]), into: Tensor(shape: [8, h.d])))
        let gold = try MoEHarness(routing: RoutingConfiguration(variant: .gold, experts: 4, moeEvery: 1, tasks: 3))
        XCTAssertThrowsError(try XCTUnwrap(gold.stack.taskLevel).forward(gold.xEnc1, layout: noLabels, training: false))
        var badLabel = h.encLayout; badLabel.taskLabels = [0, 3]
        XCTAssertThrowsError(try tl.forward(h.xEnc1, layout: badLabel, training: false))
        // An incremental step needs the layer's own typed state.
        final class Foreign: IncrementalState { func reorder(_ rows: [Int]) {} }
        var step = TokenLayout(side: .decoder, batchSize: h.b, length: 1, mask: [1, 1], state: Foreign(),
                               taskRepresentation: noLabels.taskRepresentation)
        XCTAssertThrowsError(try h.layers[2].forward(Tensor(shape: [h.b, h.d]), layout: step, training: false))
        step.state = h.layers[2].makeIncrementalState(batchSize: h.b)
        XCTAssertNoThrow(try h.layers[2].forward(Tensor(shape: [h.b, h.d]), layout: step, training: false))
    }
}
