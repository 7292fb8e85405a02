import Foundation

/// `report.md` and its plots from the finished variants of a `PaperExperiment`: BLEU per task and
/// averaged, experts per token per task and per MoE layer, task accuracy, the task × predicted-task
/// matrix, and per MoE layer the task × expert usage matrix of every variant.
public struct PaperReport {
    public static let bleuPlotFile = "bleu.svg"
    public static let layerPlotFile = "experts-per-layer.svg"

    public var results: [PaperVariantResult]
    public var title: String
    /// Lines describing the sweep (corpus, size, budget, machine).
    public var setup: [String]

    public init(results: [PaperVariantResult], title: String, setup: [String]) {
        self.results = results; self.title = title; self.setup = setup
    }

    /// Writes report.md, bleu.svg and experts-per-layer.svg into `directory`.
    public func write(to directory: String) throws {
        try markdown.write(toFile: directory + "/report.md", atomically: true, encoding: .utf8)
        try bleuPlot.write(toFile: directory + "/" + Self.bleuPlotFile, atomically: true, encoding: .utf8)
        try layerPlot.write(toFile: directory + "/" + Self.layerPlotFile, atomically: true, encoding: .utf8)
    }

    var tasks: [String] { results.first?.tasks ?? [] }

    /// Every MoE layer name any variant has, in ordinal order of the variant with the most.
    var layerNames: [String] { results.map(\.moeLayers).max { $0.count < $1.count } ?? [] }

    /// BLEU of every task and the average, one series per variant.
    public var bleuPlot: String {
        SVGPlot.groupedBars(title: "Test BLEU per variant", yLabel: "BLEU", categories: tasks + ["average"],
                            series: results.map { SVGPlot.Series(name: $0.label, values: $0.bleu + [$0.averageBLEU]) })
    }

    /// Experts per token of every MoE layer, one series per variant (dense: no MoE layers, no values).
    public var layerPlot: String {
        let names = layerNames
        return SVGPlot.lines(title: "Experts per token per MoE layer (test set)", yLabel: "experts per token",
                             categories: names.map(Self.shortName),
                             series: results.map { r in
                                 SVGPlot.Series(name: r.label, values: names.map { n in
                                     r.moeLayers.firstIndex(of: n).flatMap { r.expertsPerTokenByLayer[$0] } })
                             })
    }

    /// `encoder.layers.1.moe` → `enc 1`.
    static func shortName(_ layer: String) -> String {
        let parts = layer.split(separator: ".")
        guard parts.count >= 3 else { return layer }
        return (parts[0] == "encoder" ? "enc " : parts[0] == "decoder" ? "dec " : parts[0] + " ") + parts[2]
    }

    static func f(_ v: Double?, _ digits: Int = 2) -> String { v.map { String(format: "%.\(digits)f", $0) } ?? "–" }

    static func row(_ cells: [String]) -> String { "| " + cells.joined(separator: " | ") + " |\n" }
    static func rule(_ n: Int) -> String { "|" + String(repeating: "---|", count: n) + "\n" }

    public var markdown: String {
        var s = "# \(title)\n\n"
        for l in setup { s += "- \(l)\n" }
        s += "\nFigures on the test set (sacreBLEU 13a, greedy); experts per token: per MoE layer the mean over "
        s += "non-pad tokens, then the mean over layers (SPEC §4); routing figures from a teacher-forced pass.\n\n"

        s += "## BLEU per task and average\n\n![BLEU per variant](\(Self.bleuPlotFile))\n\n"
        s += Self.row(["variant"] + tasks + ["**average**", "experts/token", "task accuracy", "time (s)"])
        s += Self.rule(tasks.count + 5)
        for r in results {
            s += Self.row([r.label] + r.bleu.map { Self.f($0) } + ["**\(Self.f(r.averageBLEU))**", Self.f(r.expertsPerToken, 3),
                                                                   Self.f(r.taskAccuracy, 3), String(format: "%.0f", r.seconds)])
        }

        s += "\n## Experts per token per task\n\n"
        s += Self.row(["variant"] + tasks + ["all"])
        s += Self.rule(tasks.count + 2)
        for r in results {
            s += Self.row([r.label] + r.expertsPerTokenByTask.map { Self.f($0, 3) } + [Self.f(r.expertsPerToken, 3)])
        }

        let layers = layerNames
        s += "\n## Experts per token per MoE layer\n\n![experts per token per layer](\(Self.layerPlotFile))\n\n"
        s += Self.row(["variant"] + layers.map { "`\($0)`" })
        s += Self.rule(layers.count + 1)
        for r in results {
            s += Self.row([r.label] + layers.map { n in Self.f(r.moeLayers.firstIndex(of: n).flatMap { r.expertsPerTokenByLayer[$0] }, 3) })
        }

        s += "\n## Task × predicted task (row-normalized)\n\n"
        let predicting = results.filter { !$0.taskMatrix.isEmpty }
        if predicting.isEmpty { s += "No variant here has a task predictor.\n" }
        for r in predicting {
            s += "**\(r.label)** (accuracy \(Self.f(r.taskAccuracy, 3)))\n\n"
            s += Self.row(["gold \\ predicted"] + tasks)
            s += Self.rule(tasks.count + 1)
            for (i, row) in r.taskMatrix.enumerated() where i < tasks.count {
                s += Self.row([tasks[i]] + row.map { Self.f($0, 3) })
            }
            s += "\n"
        }

        s += "\n## Task × expert usage per MoE layer\n\n"
        s += "Entry (task, expert): the share of the task's test tokens that the expert served; a row sums to the "
        s += "task's experts per token in that layer. Rows that differ mean experts specialise by task; equal rows "
        s += "mean every task uses the same experts.\n\n"
        for r in results where !r.moeLayers.isEmpty {
            s += "### \(r.label)\n\n"
            for (l, name) in r.moeLayers.enumerated() where l < r.expertUsage.count {
                let m = r.expertUsage[l]
                let n = m.first?.count ?? 0
                s += "`\(name)`\n\n"
                s += Self.row(["task"] + (0..<n).map { "e\($0)" })
                s += Self.rule(n + 1)
                for (i, row) in m.enumerated() where i < tasks.count {
                    s += Self.row([tasks[i]] + row.map { Self.f($0, 2) })
                }
                s += "\n"
            }
        }
        return s
    }
}
