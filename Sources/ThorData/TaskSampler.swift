import Foundation
import ThorTensor

/// Temperature-based sampling over tasks: `P(τ) ∝ n_τ^(1/temperature)`
/// (temperature 1 = proportional to size, → ∞ = uniform). Deterministic from a seed;
/// its whole state is ``state`` (one integer).
public struct TaskSampler: Sendable, Equatable {
    /// Sampling probability of each task.
    public let probabilities: [Double]
    /// Cumulative probabilities (last = 1).
    private let cumulative: [Double]
    /// The random generator's state; restoring it reproduces the draws.
    public var state: UInt64

    /// - Throws: ``TokenizerError`` if there are no tasks, a size is negative, all are zero,
    ///   or the temperature is not positive and finite.
    public init(taskSizes: [Int], temperature: Double = 1.5, seed: UInt64) throws {
        guard !taskSizes.isEmpty, taskSizes.allSatisfy({ $0 >= 0 }), taskSizes.contains(where: { $0 > 0 }) else {
            throw TokenizerError("task sampling needs at least one task with pairs and no negative sizes (got \(taskSizes))")
        }
        guard temperature > 0, temperature.isFinite else {
            throw TokenizerError("sampling temperature must be positive and finite (got \(temperature))")
        }
        let weights = taskSizes.map { $0 == 0 ? 0 : pow(Double($0), 1 / temperature) }
        let total = weights.reduce(0, +)
        probabilities = weights.map { $0 / total }
        var c: [Double] = []
        var acc = 0.0
        for p in probabilities { acc += p; c.append(acc) }
        // the last task with a positive weight closes the distribution exactly
        if let last = probabilities.lastIndex(where: { $0 > 0 }) { for i in last..<c.count { c[i] = 1 } }
        cumulative = c
        state = RandomGenerator(seed: seed, stream: [0x7A5C]).state
    }

    /// Draws a task index.
    public mutating func next() -> Int {
        var g = RandomGenerator(seed: 0)
        g.state = state
        let u = g.nextDouble()
        state = g.state
        for (i, c) in cumulative.enumerated() where u < c && probabilities[i] > 0 { return i }
        return cumulative.count - 1
    }
}


/// Where a ``TrainingBatches`` stream is: plain integers, so a trainer can store
/// them in a checkpoint and resume the exact same batch sequence.
public struct DataPosition: Sendable, Equatable, Codable {
    /// Epoch number (0-based) of the next batch.
    public var epoch: Int
    /// Index of the next batch within the epoch.
    public var batch: Int
    /// Task sampler state at the start of the epoch.
    public var samplerState: UInt64
    /// Per task: position in its current pass over the task's pairs, at the start of the epoch.
    public var taskCursors: [Int]
    /// Per task: number of completed passes over its pairs, at the start of the epoch.
    public var taskPasses: [Int]

    public init(epoch: Int, batch: Int, samplerState: UInt64, taskCursors: [Int], taskPasses: [Int]) {
        self.epoch = epoch; self.batch = batch; self.samplerState = samplerState
        self.taskCursors = taskCursors; self.taskPasses = taskPasses
    }
}

/// An endless, deterministic stream of training batches with temperature sampling over tasks.
///
/// Each epoch draws `epochSize` sentences: a task from the ``TaskSampler``, then the next
/// sentence of that task in a per-task shuffled order (reshuffled, seeded by the pass number,
/// each time a task runs out). The epoch's sentences are grouped by length under the token
/// budget (``Batching/group(_:of:maxTokens:)``) and the batches shuffled. Everything derives from
/// `seed` and ``position``; `restore(_:)` resumes bit-identically.
public struct TrainingBatches: Sendable {
    public let corpus: EncodedCorpus
    public let maxTokens: Int
    public let seed: UInt64
    /// Sentences drawn per epoch.
    public let epochSize: Int
    private let byTask: [[Int]]
    private var sampler: TaskSampler
    private var epochStart: DataPosition
    private var epochBatches: [[Int]] = []
    private var batchIndex = 0

    /// - Throws: ``TokenizerError`` for an empty corpus, a non-positive budget or a bad temperature.
    public init(corpus: EncodedCorpus, maxTokens: Int, temperature: Double = 1.5, seed: UInt64, epochSize: Int? = nil) throws {
        guard maxTokens > 0 else { throw TokenizerError("maxTokens must be positive (got \(maxTokens))") }
        guard !corpus.pairs.isEmpty else { throw TokenizerError("the training corpus is empty") }
        self.corpus = corpus
        self.maxTokens = maxTokens
        self.seed = seed
        self.epochSize = epochSize ?? corpus.pairs.count
        guard self.epochSize > 0 else { throw TokenizerError("epochSize must be positive") }
        var byTask = Array(repeating: [Int](), count: corpus.tasks.count)
        for (i, p) in corpus.pairs.enumerated() { byTask[Int(p.task)].append(i) }
        self.byTask = byTask
        sampler = try TaskSampler(taskSizes: byTask.map(\.count), temperature: temperature, seed: seed)
        epochStart = DataPosition(epoch: 0, batch: 0, samplerState: sampler.state,
                                  taskCursors: Array(repeating: 0, count: byTask.count),
                                  taskPasses: Array(repeating: 0, count: byTask.count))
        buildEpoch()
    }

    /// The sampling probability of each task.
    public var taskProbabilities: [Double] { sampler.probabilities }

    /// The position of the next batch.
    public var position: DataPosition {
        var p = epochStart
        p.batch = batchIndex
        return p
    }

    /// Continues from a saved position. - Throws: ``TokenizerError`` if it does not fit this corpus.
    public mutating func restore(_ position: DataPosition) throws {
        let n = byTask.count
        guard position.taskCursors.count == n, position.taskPasses.count == n, position.epoch >= 0, position.batch >= 0,
              zip(position.taskCursors, byTask).allSatisfy({ $0 >= 0 && ($0 < $1.count || $1.isEmpty) }),
              position.taskPasses.allSatisfy({ $0 >= 0 }) else {
            throw TokenizerError("data position does not fit this corpus (\(n) tasks)")
        }
        var start = position
        start.batch = 0
        let saved = (epochStart, sampler, epochBatches, batchIndex, nextStart)
        epochStart = start
        buildEpoch()
        guard position.batch <= epochBatches.count else {
            (epochStart, sampler, epochBatches, batchIndex, nextStart) = saved
            throw TokenizerError("data position batch \(position.batch) is beyond the epoch's \(epochBatches.count) batches")
        }
        batchIndex = position.batch
    }

    /// The next batch.
    public mutating func next() -> Seq2SeqBatch {
        if batchIndex >= epochBatches.count { advanceEpoch() }
        let idx = epochBatches[batchIndex]
        batchIndex += 1
        return Seq2SeqBatch(pairs: idx.map { corpus.pairs[$0] }, indices: idx)
    }

    /// Draws the epoch described by `epochStart` (and leaves sampler/cursors at its end in `nextStart`).
    private var nextStart: DataPosition = DataPosition(epoch: 0, batch: 0, samplerState: 0, taskCursors: [], taskPasses: [])

    private mutating func buildEpoch() {
        sampler.state = epochStart.samplerState
        var cursors = epochStart.taskCursors, passes = epochStart.taskPasses
        var orders: [[Int]?] = Array(repeating: nil, count: byTask.count)
        func order(_ t: Int, pass: Int) -> [Int] {
            var o = byTask[t]
            var g = RandomGenerator(seed: seed, stream: [0x0DE2, UInt64(t), UInt64(pass)])
            g.shuffle(&o)
            return o
        }
        var chosen: [Int] = []
        chosen.reserveCapacity(epochSize)
        for _ in 0..<epochSize {
            let t = sampler.next()
            if orders[t] == nil { orders[t] = order(t, pass: passes[t]) }
            chosen.append(orders[t]![cursors[t]])
            cursors[t] += 1
            if cursors[t] == byTask[t].count { cursors[t] = 0; passes[t] += 1; orders[t] = order(t, pass: passes[t]) }
        }
        var batches = Batching.group(chosen, of: corpus, maxTokens: maxTokens)
        var g = RandomGenerator(seed: seed, stream: [0xBA7C, UInt64(epochStart.epoch)])
        g.shuffle(&batches)
        epochBatches = batches
        batchIndex = 0
        nextStart = DataPosition(epoch: epochStart.epoch + 1, batch: 0, samplerState: sampler.state,
                                 taskCursors: cursors, taskPasses: passes)
    }

    private mutating func advanceEpoch() {
        epochStart = nextStart
        buildEpoch()
    }
}
