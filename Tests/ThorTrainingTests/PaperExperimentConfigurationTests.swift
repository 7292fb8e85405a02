import XCTest
import Foundation
import ThorModel
import ThorTraining

/// The configurations `thor experiment paper` gives its variants at the full (non-quick) size,
/// where the runs use expert workers.
final class PaperExperimentConfigurationTests: XCTestCase {
    /// The dense baseline has no routed experts: with the sweep's 2 workers (or any --workers) it
    /// must run in-process, or the run refuses it and the sweep stops before the report.
    func testDenseRunsInProcessWhileTheOthersKeepTheirWorkers() throws {
        for overrides in [[:], ["cluster.workers": "3"]] as [[String: String]] {
            var o = PaperExperiment.Options(out: NSTemporaryDirectory() + "thor-paper-config-unused")
            o.overrides = overrides
            let experiment = PaperExperiment(options: o)
            let workers = overrides["cluster.workers"].flatMap(Int.init) ?? 2
            for v in PaperExperiment.comparisonSet {
                let c = try experiment.configuration(of: v)
                XCTAssertEqual(c.cluster.workers, v.id == "dense" ? 0 : workers, "\(v.id) with \(overrides)")
                // The check a run makes before it starts passes for every variant.
                XCTAssertNoThrow(try ResourceEstimate(c).check(available: .infinity, warn: { _ in }), "\(v.id) with \(overrides)")
            }
        }
    }
}
