/// Routing figures the paper reports (SPEC §4), accumulable over batches and steps:
/// activated experts per token (per MoE layer and per task), expert load per layer,
/// the task × expert usage per layer, task-prediction accuracy and the task × predicted-task matrix.
///
/// Experts per token counts the experts a token actually used (after capacity dropping)
/// over non-pad tokens: per layer the mean over tokens, then the mean over MoE layers.
public struct RoutingStatistics: Sendable, Equatable, Codable {
    public let layers: Int
    public let experts: Int
    public let tasks: Int
    /// Non-pad tokens seen, `[layer][task]`; index `tasks` collects tokens without a gold task.
    public private(set) var tokens: [[Double]]
    /// Σ experts used by those tokens, same indexing.
    public private(set) var expertsUsed: [[Double]]
    /// Token→expert assignments kept, `[layer][expert]`.
    public private(set) var load: [[Double]]
    /// Token→expert assignments kept, `[layer][task][expert]` (task index `tasks`: tokens without a gold task).
    public private(set) var taskLoad: [[[Double]]]
    /// Sentences by gold task (row) and predicted task (column).
    public private(set) var taskMatrix: [[Double]]

    public init(layers: Int, experts: Int, tasks: Int) {
        self.layers = layers; self.experts = experts; self.tasks = max(0, tasks)
        tokens = Array(repeating: Array(repeating: 0, count: self.tasks + 1), count: layers)
        expertsUsed = tokens
        load = Array(repeating: Array(repeating: 0, count: experts), count: layers)
        taskLoad = Array(repeating: Array(repeating: Array(repeating: 0, count: experts), count: self.tasks + 1), count: layers)
        taskMatrix = Array(repeating: Array(repeating: 0, count: self.tasks), count: self.tasks)
    }

    /// Adds one forward of MoE layer `layer`: the kept experts of every non-pad row,
    /// sentence `t / length` having gold task `labels?[t / length]`.
    public mutating func record(layer: Int, decision: RoutingDecision, mask: [Float], length: Int, labels: [Int]?) {
        for t in 0..<decision.rows where mask[t] != 0 {
            var task = tasks
            if let labels, labels[t / length] >= 0, labels[t / length] < tasks { task = labels[t / length] }
            var used = 0
            for s in 0..<Int(decision.count[t]) where decision.kept[t * decision.slots + s] != 0 {
                used += 1
                let e = Int(decision.experts[t * decision.slots + s])
                load[layer][e] += 1
                taskLoad[layer][task][e] += 1
            }
            tokens[layer][task] += 1
            expertsUsed[layer][task] += Double(used)
        }
    }

    /// Adds task predictions; only sentences with a gold label enter the matrix.
    public mutating func recordPredictions(_ predicted: [Int], gold: [Int]?) {
        guard let gold else { return }
        for (p, g) in zip(predicted, gold) where g >= 0 && g < tasks && p >= 0 && p < tasks { taskMatrix[g][p] += 1 }
    }

    /// Adds another accumulation of the same shape.
    public mutating func merge(_ o: RoutingStatistics) {
        precondition(o.layers == layers && o.experts == experts && o.tasks == tasks, "merging statistics of different shapes")
        for l in 0..<layers {
            for t in 0...tasks { tokens[l][t] += o.tokens[l][t]; expertsUsed[l][t] += o.expertsUsed[l][t] }
            for e in 0..<experts { load[l][e] += o.load[l][e] }
            for t in 0...tasks { for e in 0..<experts { taskLoad[l][t][e] += o.taskLoad[l][t][e] } }
        }
        for a in 0..<tasks { for b in 0..<tasks { taskMatrix[a][b] += o.taskMatrix[a][b] } }
    }

    /// Mean experts per non-pad token in `layer` (all tasks, or one task); nil without tokens.
    public func expertsPerToken(layer: Int, task: Int? = nil) -> Double? {
        let n = task.map { tokens[layer][$0] } ?? tokens[layer].reduce(0, +)
        let e = task.map { expertsUsed[layer][$0] } ?? expertsUsed[layer].reduce(0, +)
        return n > 0 ? e / n : nil
    }

    /// Per-layer means averaged over the MoE layers that saw tokens (of `task`, when given).
    public func expertsPerToken(task: Int? = nil) -> Double? {
        let per = (0..<layers).compactMap { expertsPerToken(layer: $0, task: task) }
        return per.isEmpty ? nil : per.reduce(0, +) / Double(per.count)
    }

    /// Share of `layer`'s kept assignments that went to each expert.
    public func loadShare(layer: Int) -> [Double] {
        let s = load[layer].reduce(0, +)
        return load[layer].map { s > 0 ? $0 / s : 0 }
    }

    /// The task × expert usage matrix of `layer`: entry `[τ][e]` is the share of task `τ`'s non-pad
    /// tokens that expert `e` served (kept assignments / tokens), so a row sums to the task's experts
    /// per token in that layer. Rows `0..<tasks` (gold tasks; a task without tokens gives a row of 0).
    /// It shows whether the experts specialise by task or every task uses the same ones.
    public func taskExpertUsage(layer: Int) -> [[Double]] {
        (0..<tasks).map { t in
            let n = tokens[layer][t]
            return taskLoad[layer][t].map { n > 0 ? $0 / n : 0 }
        }
    }

    /// Fraction of labelled sentences whose predicted task is the gold one.
    public var taskAccuracy: Double? {
        var right = 0.0, all = 0.0
        for a in 0..<tasks { for b in 0..<tasks { all += taskMatrix[a][b]; if a == b { right += taskMatrix[a][b] } } }
        return all > 0 ? right / all : nil
    }

    /// The task × predicted-task matrix with each row normalized to sum 1 (rows without sentences stay 0).
    public var normalizedTaskMatrix: [[Double]] {
        taskMatrix.map { row in let s = row.reduce(0, +); return row.map { s > 0 ? $0 / s : 0 } }
    }
}

/// Where MoE layers put routing statistics while collection is on (shared by one model's layers).
public final class RoutingStatisticsCollector: @unchecked Sendable {
    /// Accumulates while non-nil.
    public var statistics: RoutingStatistics?
    public init() {}
}
