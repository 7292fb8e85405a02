import XCTest
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import ThorTraining

/// The scaling cost model: its arithmetic by hand, its fit on synthetic measurements, its link
/// parser, its bottleneck, and the scaling plots.
final class ScalingModelTests: XCTestCase {
    /// Round numbers so every feature can be computed by hand.
    static let rates = ComponentRates(
        cores: 2, expertFlopsPerCore: ["8": 1e9], attentionFlopsPerCore: ["8": 2e9],
        routingSecondsPerToken: ["d=8,N=4": 1e-6], combineSecondsPerAssignment: ["8": 1e-7],
        encodeBytesPerSecond: 1e9, decodeBytesPerSecond: 2e9, adamParametersPerSecond: 1e8,
        links: ["ipc": LinkModel(latency: 1e-5, bandwidth: 1e9), "tcp": LinkModel(latency: 2e-5, bandwidth: 5e8)],
        sendSecondsPerMessage: ["ipc": 2e-6, "tcp": 3e-6])

    func workload(workers: Int = 2, tokens: Int = 64, experts: Int = 4, imbalance: Double = 1.5) -> ScalingWorkload {
        ScalingWorkload(tokens: tokens, length: 16, modelDim: 8, hiddenDim: 32, experts: experts, moeLayers: 2, workers: workers,
                        coresPerNode: 2, expertsPerToken: 1.5, imbalance: imbalance)
    }

    /// Every feature of a tiny case, worked out by hand (docs/scaling.md's equations).
    func testFeaturesAndPredictionByHand() throws {
        let w = workload()
        let f = try ScalingCostModel(rates: Self.rates).features(w, link: .measured("ipc"))
        // attention: 3·(8·64·8² + 4·64·16·8) = 3·(32768 + 32768) = 196608 flops at 2e9/s.
        XCTAssertEqual(f[.attention]![0], 196608 / 2e9, accuracy: 1e-15)
        // routing: M·n·1e-6 = 2·64·1e-6.
        XCTAssertEqual(f[.routing]![0], 128e-6, accuracy: 1e-15)
        // assignments = M·n·e = 2·64·1.5 = 192; combine 192·1e-7.
        XCTAssertEqual(f[.combine]![0], 192e-7, accuracy: 1e-15)
        // bytes = 4·192·8·4 = 24576; encode: 2·2 exchanges · 2 hosts = 8 requests at 2 µs each
        // on the send path + half the bytes at 1e9; decode half at 2e9.
        XCTAssertEqual(f[.encode]![0], 8 * 2e-6 + 12288 / 1e9, accuracy: 1e-15)
        XCTAssertEqual(f[.decode]![0], 12288 / 2e9, accuracy: 1e-15)
        // compute: mean rows 96, busiest 144; 144 rows · 12·8·32 flops at 1e9/s; all 192 rows over
        // the 2 cores in use.
        XCTAssertEqual(f[.wait]![0], 144 * 3072 / 1e9, accuracy: 1e-15)
        XCTAssertEqual(f[.wait]![1], 96 * 3072 / 1e9, accuracy: 1e-15)
        // wire: 4 exchanges · 2 · 1e-5 + 24576/1e9 + busiest bytes 24576/2·1.5 = 18432, half each way through the codec.
        let codec: Double = 18432.0 / 2 * (1 / 1e9 + 1 / 2e9)
        let wire: Double = 8e-5 + 24576.0 / 1e9 + codec
        XCTAssertEqual(f[.wait]![2], wire, accuracy: 1e-15)
        // per-request latency: 8 expert requests · 1e-5.
        XCTAssertEqual(f[.wait]![3], 8e-5, accuracy: 1e-15)
        // optimizer: 4·1e-5 + ceil(8 keys / 2 workers)·(2·8·32 + 8 + 32) params / 1e8; all 8 experts'
        // Adam over the 2 cores.
        XCTAssertEqual(f[.optimizer]![0], 4e-5 + 4 * 552 / 1e8, accuracy: 1e-15)
        XCTAssertEqual(f[.optimizer]![1], 8 * 552 / 1e8 / 2, accuracy: 1e-15)
        // Two replicas: each expert's gradients (552 f32) go to the coordinator and on to the replica:
        // 4·(2 layers · 4 experts)·552·2 bytes over the link and through the codec; Adam on ceil(16/2) experts.
        var replicated = w
        replicated.replicas = 2
        let shipped: Double = 4 * 8 * 552 * 2
        let fr = try ScalingCostModel(rates: Self.rates).features(replicated, link: .measured("ipc"))
        let shipping: Double = shipped / 1e9 + shipped / 2 * (1 / 1e9 + 1 / 2e9)
        XCTAssertEqual(fr[.optimizer]![0], 4e-5 + 8 * 552 / 1e8 + shipping, accuracy: 1e-15)
        // requests: (2·2 + 2) exchanges · 2 workers.
        XCTAssertEqual(f[.other]![0], 12)

        // Coefficients scale each feature; the step is the sum of the phases.
        var model = ScalingCostModel(rates: Self.rates)
        // The pure micro-benchmark model: the busiest worker's compute and the wire, nothing else.
        XCTAssertEqual(model.coefficients[.wait], [1, 0, 1, 0])
        XCTAssertEqual(model.coefficients[.optimizer], [1, 0])
        model.coefficients[.wait] = [2, 0.5, 3, 4]
        model.coefficients[.other] = [1e-6]
        let p = try model.predict(w, link: .measured("ipc"))
        let compute: Double = 144.0 * 3072 / 1e9, shared: Double = 96.0 * 3072 / 1e9
        XCTAssertEqual(p[.wait]!, 2 * compute + 0.5 * shared + 3 * wire + 4 * 8e-5, accuracy: 1e-15)
        XCTAssertEqual(p[.other]!, 12e-6, accuracy: 1e-18)
        XCTAssertEqual(try model.predictStep(w, link: .measured("ipc")), p.values.reduce(0, +), accuracy: 1e-15)
        // A model from an older version (2 wait coefficients) is refused, naming the phase.
        var old2 = model
        old2.coefficients[.wait] = [1, 1]
        XCTAssertThrowsError(try old2.predict(w, link: .measured("ipc"))) { e in
            XCTAssertTrue("\(e)".contains("2 coefficient(s) for wait, this version has 4 features"), "\(e)")
        }

        // More workers than cores: the busiest worker has 48 rows, but the 192 rows share 2 cores.
        let crowded = try ScalingCostModel(rates: Self.rates).features(workload(workers: 4, imbalance: 1), link: .measured("ipc"))
        XCTAssertEqual(crowded[.wait]![0], 48 * 3072 / 1e9, accuracy: 1e-15)
        XCTAssertEqual(crowded[.wait]![1], 96 * 3072 / 1e9, accuracy: 1e-15)
        // Rates from before the send path was measured: no send cost.
        var old = Self.rates
        old.sendSecondsPerMessage = nil
        XCTAssertEqual(try ScalingCostModel(rates: old).features(w, link: .measured("ipc"))[.encode]![0], 12288 / 1e9, accuracy: 1e-15)
    }

    /// Several nodes: a 1/nodes share of the bytes stays on the coordinator's node (ipc), the rest crosses the link.
    func testNodesSplitTrafficBetweenIPCAndTheLink() throws {
        var w = workload(workers: 8, imbalance: 1)
        w.nodes = 4; w.coresPerNode = 2
        let link = LinkModel(latency: 5e-6, bandwidth: 12.5e9)
        let f = try ScalingCostModel(rates: Self.rates).features(w, link: .given(link))
        let bytes = w.wireBytes
        let busiest = bytes / 8
        let codec: Double = busiest / 2 * (1 / 1e9 + 1 / 2e9)
        let wire: Double = 8e-5 + bytes / 4 / 1e9 + bytes * 3 / 4 / 12.5e9 + codec
        XCTAssertEqual(f[.wait]![2], wire, accuracy: 1e-15)
        // 4 nodes of 2 cores: 8 cores share all 192 rows; 2·2 exchanges · 4 hosts (4 experts) at the larger latency.
        XCTAssertEqual(f[.wait]![1], 192.0 / 8 * 3072 / 1e9, accuracy: 1e-15)
        XCTAssertEqual(f[.wait]![3], 16 * 1e-5, accuracy: 1e-15)
    }

    /// A synthetic measurement set made from known coefficients: the fit recovers them.
    func testFitRecoversKnownCoefficients() throws {
        var truth = ScalingCostModel(rates: Self.rates)
        truth.coefficients = [.attention: [1.3], .routing: [0.8], .combine: [2.0], .encode: [1.1], .wait: [1.7, 0.4, 0.6, 2.0],
                              .decode: [0.9], .optimizer: [1.2, 0.7], .other: [3e-5]]
        var observations: [ScalingCostModel.Observation] = []
        for (i, (workers, tokens)) in [(1, 64), (2, 64), (4, 128), (2, 256), (3, 96), (4, 32)].enumerated() {
            let w = workload(workers: workers, tokens: tokens, imbalance: 1 + 0.1 * Double(i))
            let link: ScalingCostModel.Link = .measured(i % 2 == 0 ? "ipc" : "tcp")
            observations.append(ScalingCostModel.Observation(workload: w, link: link, phases: try truth.predict(w, link: link)))
        }
        let fitted = try ScalingCostModel.fit(observations, rates: Self.rates)
        for p in ScalingPhase.allCases {
            for (a, b) in zip(fitted.coefficients[p]!, truth.coefficients[p]!) {
                XCTAssertEqual(a, b, accuracy: 1e-6 * max(1, abs(b)), "\(p)")
            }
        }
        // And predicts an unseen configuration exactly.
        let unseen = workload(workers: 3, tokens: 160, imbalance: 1.25)
        XCTAssertEqual(try fitted.predictStep(unseen, link: .measured("tcp")), try truth.predictStep(unseen, link: .measured("tcp")),
                       accuracy: 1e-9)
        // One observation: a clear error. Fewer observations than wait's 4 features: the best
        // subset of features, every prediction still finite and non-negative.
        XCTAssertThrowsError(try ScalingCostModel.fit(Array(observations.prefix(1)), rates: Self.rates)) { e in
            XCTAssertTrue("\(e)".contains("needs at least 2 configurations"), "\(e)")
        }
        let few = try ScalingCostModel.fit(Array(observations.prefix(2)), rates: Self.rates)
        XCTAssertTrue(few.coefficients[.wait]!.allSatisfy { $0 >= 0 && $0.isFinite })
        XCTAssertGreaterThan(try few.predictStep(unseen, link: .measured("tcp")), 0)
    }

    func testMeasuredWaitSplitFitsComputeAndWireSeparately() throws {
        // Wait measured as compute 1.5 × f_busiest + 0.25 × f_shared and wire 0.5 × f_wire +
        // 2 × f_requests: the split fit recovers all four, each pair on its own part of wait.
        let model = ScalingCostModel(rates: Self.rates)
        var observations: [ScalingCostModel.Observation] = []
        for (workers, tokens) in [(2, 64), (2, 128), (4, 256), (3, 96)] {
            let w = workload(workers: workers, tokens: tokens, imbalance: 1.2)
            let f = try model.features(w, link: .measured("ipc"))[.wait]!
            var phases = try model.predict(w, link: .measured("ipc"))
            let compute = 1.5 * f[0] + 0.25 * f[1]
            phases[.wait] = compute + 0.5 * f[2] + 2 * f[3]
            observations.append(ScalingCostModel.Observation(workload: w, link: .measured("ipc"), phases: phases, waitCompute: compute))
        }
        let fitted = try ScalingCostModel.fit(observations, rates: Self.rates)
        for (a, b) in zip(fitted.coefficients[.wait]!, [1.5, 0.25, 0.5, 2]) { XCTAssertEqual(a, b, accuracy: 1e-9) }
        // Encode is fitted with wait's wire part (the phases above have encode at coefficient 1).
        XCTAssertEqual(fitted.coefficients[.encode]![0], 1, accuracy: 1e-9)
        // Where encode ends and wait begins does not matter: move 30 % of each wire part into
        // encode's measurement and the same coefficients come out.
        let shifted = observations.map { o -> ScalingCostModel.Observation in
            var m = o
            let moved = 0.3 * (o.phases[.wait]! - o.waitCompute!)
            m.phases[.wait]! -= moved; m.phases[.encode]! += moved
            return m
        }
        let refit = try ScalingCostModel.fit(shifted, rates: Self.rates)
        for p in [ScalingPhase.wait, .encode] {
            for (a, b) in zip(refit.coefficients[p]!, fitted.coefficients[p]!) { XCTAssertEqual(a, b, accuracy: 1e-9, "\(p)") }
        }
        // One observation without the split: back to the joint fit on the whole wait.
        observations[0].waitCompute = nil
        observations[0].phases[.wait]! *= 1.3
        let joint = try ScalingCostModel.fit(observations, rates: Self.rates)
        XCTAssertNotEqual(joint.coefficients[.wait]!, fitted.coefficients[.wait]!)
    }

    func testNonNegativeLeastSquaresKeepsCoefficientsNonNegative() {
        // y = 2·x0 − 1·x1 unconstrained; with θ ≥ 0 the best is θ1 = 0 and θ0 fitted alone.
        let a: [[Double]] = [[1, 1], [2, 1], [3, 2], [4, 3]]
        let y = a.map { 2 * $0[0] - $0[1] }
        let theta = nonNegativeLeastSquares(a, y)
        XCTAssertEqual(theta[1], 0)
        let alone = zip(a, y).reduce(0) { $0 + $1.0[0] * $1.1 } / a.reduce(0) { $0 + $1[0] * $1[0] }
        XCTAssertEqual(theta[0], alone, accuracy: 1e-12)
    }

    func testLinkParsing() throws {
        let l = try LinkModel.parse("100gbit,5us")
        XCTAssertEqual(l.bandwidth, 12.5e9, accuracy: 1)
        XCTAssertEqual(l.latency, 5e-6, accuracy: 1e-15)
        XCTAssertEqual(try LinkModel.parse("25GByte, 2ms").bandwidth, 25e9, accuracy: 1)
        for bad in ["100gbit", "fast,5us", "100gbit,5parsecs", "-1gbit,5us"] {
            XCTAssertThrowsError(try LinkModel.parse(bad), bad)
        }
    }

    func testMissingRateIsNamed() {
        XCTAssertThrowsError(try ScalingCostModel(rates: Self.rates).features(
            ScalingWorkload(tokens: 64, length: 16, modelDim: 16, hiddenDim: 64, experts: 4, moeLayers: 2, workers: 2,
                            coresPerNode: 2, expertsPerToken: 1, imbalance: 1), link: .measured("ipc"))) { e in
            XCTAssertTrue("\(e)".contains("at 16 was not measured"), "\(e)")
        }
    }

    /// Many tokens, few flops per row: the single coordinator limits the step.
    func testBottleneckNamesTheLargestGroup() throws {
        var rates = Self.rates
        rates.expertFlopsPerCore["8"] = 1e11
        let model = ScalingCostModel(rates: rates)
        let w = workload(workers: 4, tokens: 4096, imbalance: 1)
        let phases = try model.predict(w, link: .measured("ipc"))
        let b = ScalingBottleneck.of(phases: phases, features: try model.features(w, link: .measured("ipc")), coefficients: model.coefficients)
        XCTAssertEqual(b.name, "coordinator")
        let coordinator = [ScalingPhase.attention, .routing, .combine, .encode, .decode, .other].reduce(0) { $0 + phases[$1]! }
        XCTAssertEqual(b.seconds, coordinator, accuracy: 1e-15)
        // A very slow link makes it the network.
        let slow = ScalingBottleneck.of(phases: try model.predict(w, link: .given(LinkModel(latency: 1e-2, bandwidth: 1e6))),
                                        features: try model.features(w, link: .given(LinkModel(latency: 1e-2, bandwidth: 1e6))),
                                        coefficients: model.coefficients)
        XCTAssertEqual(slow.name, "network")
    }

    // MARK: plots

    func testStackedBarsStackSegmentsInSeriesOrder() throws {
        let svg = SVGPlot.stackedBars(title: "phases", yLabel: "ms", categories: ["a", "b"], series: [
            SVGPlot.Series(name: "attention", values: [2, 1]), SVGPlot.Series(name: "wait <x>", values: [3, nil])])
        let groups = try elements(svg, named: "g").filter { attribute($0, "class") == "series" }
        XCTAssertEqual(groups.map { attribute($0, "data-series") }, ["attention", "wait <x>"])
        let segments = groups.map { g in (g.children ?? []).compactMap { $0 as? XMLElement }.filter { $0.localName == "rect" && $0.childCount > 0 } }
        XCTAssertEqual(segments.map(\.count), [2, 1])
        // The second segment of bar "a" sits on top of the first: its bottom is the first's top.
        let first = segments[0][0], second = segments[1][0]
        let y1 = Double(attribute(first, "y")!)!, y2 = Double(attribute(second, "y")!)!, h2 = Double(attribute(second, "height")!)!
        XCTAssertEqual(y2 + h2, y1, accuracy: 0.11)
        XCTAssertEqual(second.stringValue, "wait <x>, a: 3")
    }

    func testHeatMapHasOneRowPerSeriesAndTitledCells() throws {
        let svg = SVGPlot.heatMap(title: "load", columns: ["w0", "w1", "w2"], rows: [
            SVGPlot.Series(name: "W2 · layer 0", values: [0.25, 0.75, nil]),
            SVGPlot.Series(name: "W3 · layer 0", values: [0.5, 0.25, 0.25])], valueLabel: "share")
        let rows = try elements(svg, named: "g").filter { attribute($0, "class") == "series" }
        XCTAssertEqual(rows.map { attribute($0, "data-series") }, ["W2 · layer 0", "W3 · layer 0"])
        let cells = rows.map { r in (r.children ?? []).compactMap { $0 as? XMLElement }.filter { $0.localName == "rect" } }
        XCTAssertEqual(cells.map(\.count), [3, 3])
        XCTAssertEqual(cells[0].filter { $0.childCount > 0 }.map(\.stringValue), ["W2 · layer 0, w0: 0.25", "W2 · layer 0, w1: 0.75"])
        // The largest value is the darkest cell.
        XCTAssertEqual(attribute(cells[0][1], "fill"), "#1e4bb4")
    }
}
