import Foundation
import ThorTensor

/// Output of a `thor bench` command: a table for people, and the same figures as
/// one JSON object (`--json`) or CSV rows (`--csv FILE`) for plots.
struct BenchReport {
    /// One table row: a label and its cells by column name.
    struct Row { var label: String; var cells: [String: String] }

    var title: String
    var columns: [String]
    var rows: [Row] = []
    /// Scalar results (goal metrics); ordered as added.
    var fields: [(String, Any)] = []

    init(title: String, columns: [String]) { self.title = title; self.columns = columns }

    mutating func addRow(_ label: String, _ cells: [String: String]) { rows.append(Row(label: label, cells: cells)) }
    mutating func set(_ key: String, _ value: Any) {
        if let i = fields.firstIndex(where: { $0.0 == key }) { fields[i].1 = value } else { fields.append((key, value)) }
    }

    /// Every timed repetition of a case (`<key>_each`, milliseconds in run order) and their
    /// median (`<key>_median`), beside the best one a bench reports: a reader can tell one slow
    /// repetition from a slow machine.
    mutating func setRepetitions(_ key: String, seconds: [Double]) {
        let ms = seconds.map { ($0 * 10000).rounded() / 10 }
        set(key + "_each", ms)
        let sorted = ms.sorted()
        if !sorted.isEmpty {
            let median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
            set(key + "_median", (median * 10).rounded() / 10)
        }
    }

    /// The table as aligned text.
    func table() -> String {
        let header = [""] + columns
        var lines = [header] + rows.map { r in [r.label] + columns.map { r.cells[$0] ?? "" } }
        let widths = (0..<header.count).map { c in lines.map { $0[c].count }.max() ?? 0 }
        lines.insert(widths.map { String(repeating: "-", count: $0) }, at: 1)
        var out = "\(title)\n"
        for l in lines {
            out += zip(l, widths).enumerated().map { i, p in
                i == 0 ? p.0.padding(toLength: p.1, withPad: " ", startingAt: 0)
                       : String(repeating: " ", count: p.1 - p.0.count) + p.0
            }.joined(separator: "  ") + "\n"
        }
        for (k, v) in fields { out += "\(k): \(v)\n" }
        return out
    }

    /// One JSON object: the scalar fields plus `rows` (label → cells).
    func json() -> String {
        var obj: [String: Any] = [:]
        for (k, v) in fields { obj[k] = v }
        obj["rows"] = rows.map { r -> [String: Any] in
            var d: [String: Any] = ["label": r.label]
            for (k, v) in r.cells { d[k] = Double(v) ?? v }
            return d
        }
        let data = try! JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    /// CSV with a header row: label, then the columns.
    func csv() -> String {
        func esc(_ s: String) -> String { s.contains(",") || s.contains("\"") ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s }
        var out = (["label"] + columns).map(esc).joined(separator: ",") + "\n"
        for r in rows { out += ([r.label] + columns.map { r.cells[$0] ?? "" }).map(esc).joined(separator: ",") + "\n" }
        return out
    }

    /// Prints the table (or JSON with `json`) and writes CSV to `csvPath` when given.
    func emit(json asJSON: Bool, csvPath: String?) throws {
        print(asJSON ? json() : table(), terminator: asJSON ? "\n" : "")
        if let csvPath { try csv().write(toFile: csvPath, atomically: true, encoding: .utf8) }
    }
}

/// Keeps a value alive so the optimizer cannot remove the work that made it.
@inline(never) func blackHole<T>(_ value: T) { withExtendedLifetime(value) {} }

/// Wall-clock seconds of `body`, best of `repeats` after one warm-up run.
func bestTime(repeats: Int = 3, _ body: () throws -> Void) rethrows -> Double {
    try body()
    var best = Double.infinity
    for _ in 0..<max(1, repeats) {
        let t0 = MonotonicClock.seconds()
        try body()
        best = min(best, MonotonicClock.seconds() - t0)
    }
    return best
}

/// Options every bench command takes.
import ArgumentParser
import ThorTensor
import ThorModel
struct BenchOutputOptions: ParsableArguments {
    @Flag(help: "Print one JSON object instead of the table.")
    var json = false
    @Option(help: "Also write the table's rows as CSV to this file.")
    var csv: String?
    @Option(help: "Timed repetitions per measurement (best is reported).")
    var repeats = 3
}

/// The MoE layer and batch shape `thor bench moe` and `thor bench distributed` measure.
struct MoELayerBenchOptions: ParsableArguments {
    @Option(help: "Model width d.") var modelDim = 512
    @Option(help: "Expert hidden width d_ff.") var hiddenDim = 2048
    @Option(help: "Experts N (THOR candidates K = N/2).") var experts = 8
    @Option(help: "Sentences per batch.") var sentences = 32
    @Option(help: "Positions per sentence.") var length = 128
    @Option(help: "Tasks T.") var tasks = 4

    var tokens: Int { sentences * length }

    /// A one-layer encoder/decoder configuration of these widths (ReLU, 8 heads).
    var model: TransformerConfiguration {
        TransformerConfiguration(vocabularySize: 8, modelDim: modelDim, hiddenDim: hiddenDim,
                                 heads: 8, encoderLayers: 1, decoderLayers: 1, activation: .relu)
    }

    /// Input x ~ N(0, 1) and output gradient dy ~ N(0, 0.01²) of shape [tokens, d] (seed 7),
    /// and the encoder layout: every position real, sentence i of task i mod T.
    func inputs() -> (x: Tensor, dy: Tensor, layout: TokenLayout) {
        let x = Tensor(shape: [tokens, modelDim]), dy = Tensor(shape: [tokens, modelDim])
        var rng = RandomGenerator(seed: 7)
        rng.fillNormal(x.pointer, count: x.count, std: 1)
        rng.fillNormal(dy.pointer, count: dy.count, std: 0.01)
        let layout = TokenLayout(side: .encoder, batchSize: sentences, length: length,
                                 mask: [Float](repeating: 1, count: tokens), taskLabels: (0..<sentences).map { $0 % tasks })
        return (x, dy, layout)
    }
}
