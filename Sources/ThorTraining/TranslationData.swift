import ThorData
import ThorModel

/// The corpora of a run, tokenized: the built-in synthetic corpus or corpus files
/// (`task<TAB>source<TAB>target`), and the byte-level BPE vocabulary learned from
/// the training side (or loaded from a checkpoint).
public struct TranslationData: Sendable {
    public let tasks: [String]
    public let tokenizer: BPETokenizer
    public let train: EncodedCorpus
    public let dev: EncodedCorpus
    public let test: EncodedCorpus
    /// Dev and test pairs as text, in the same order as `dev.pairs` / `test.pairs`.
    public let devPairs: [TranslationPair]
    public let testPairs: [TranslationPair]
    /// What the user should know about the data (lines skipped for length), one line each.
    public var warnings: [String] = []

    /// Reads or generates the corpora. With `tokenizer` (from a checkpoint) the vocabulary is
    /// reused; otherwise it is learned from the training pairs (sources and targets).
    /// `tasks`, when given (from a checkpoint), fixes the task order.
    public static func load(_ c: DataConfiguration, seed: UInt64, maxPositions: Int,
                            tokenizer given: BPETokenizer? = nil, tasks givenTasks: [String]? = nil) throws -> TranslationData {
        let train: [TranslationPair], dev: [TranslationPair], test: [TranslationPair]
        let tasks: [String]
        if c.usesBuiltinCorpus {
            var sc = SyntheticCorpus.Configuration()
            sc.seed = seed
            sc.trainSize = c.syntheticPairs
            sc.devSizePerDomain = c.syntheticEvalPairsPerTask
            sc.testSizePerDomain = c.syntheticEvalPairsPerTask
            let corpus = try SyntheticCorpus(configuration: sc)
            (train, dev, test, tasks) = (corpus.train, corpus.dev, corpus.test, corpus.tasks)
        } else {
            train = try CorpusFile.read(path: c.train, tasks: givenTasks)
            tasks = givenTasks ?? Array(Set(train.map(\.task))).sorted()
            dev = try CorpusFile.read(path: c.dev, tasks: tasks)
            test = try CorpusFile.read(path: c.test, tasks: tasks)
        }
        if let givenTasks, givenTasks != tasks {
            throw TrainingError.data("the corpus tasks \(tasks) differ from the checkpoint's \(givenTasks)")
        }
        guard !train.isEmpty else { throw TrainingError.data("the training corpus is empty") }
        // An empty evaluation set would score BLEU 0.00 and loss 0.0000 instead of saying so.
        guard !dev.isEmpty else { throw TrainingError.data("the dev set (data.dev: \(c.dev)) has no pairs") }
        guard !test.isEmpty else { throw TrainingError.data("the test set (data.test: \(c.test)) has no pairs") }
        let tokenizer = try given ?? BPETokenizer.learn(from: train.map(\.source) + train.map(\.target),
                                                        vocabularySize: c.vocabularySize)
        let limit = min(c.maxLength, maxPositions)
        var warnings: [String] = []
        /// "n lines over the limit skipped, first at file:line" for a corpus that lost pairs to length.
        func report(_ e: EncodedCorpus, _ file: String, _ limitText: String) {
            guard let first = e.droppedIndices.first else { return }
            let where_ = c.usesBuiltinCorpus ? "\(file) pair \(first + 1)" : "\(file):\(first + 1)"
            warnings.append("\(e.droppedForLength) line\(e.droppedForLength == 1 ? "" : "s") over the limit (\(limitText)) "
                            + "skipped, first at \(where_)")
        }
        let encodedTrain = try EncodedCorpus(pairs: train, tokenizer: tokenizer, tasks: tasks, maxLength: limit)
        report(encodedTrain, c.usesBuiltinCorpus ? "synthetic train" : c.train, "\(limit) tokens, data.max_length")
        guard !encodedTrain.pairs.isEmpty else {
            throw TrainingError.data("every training pair is longer than data.max_length (\(limit) tokens)")
        }
        // Evaluation sets keep every pair the positional table can hold; references stay aligned
        // with the kept pairs, and skipped ones are reported like training ones.
        let encodedDev = try EncodedCorpus(pairs: dev, tokenizer: tokenizer, tasks: tasks, maxLength: maxPositions)
        let encodedTest = try EncodedCorpus(pairs: test, tokenizer: tokenizer, tasks: tasks, maxLength: maxPositions)
        report(encodedDev, c.usesBuiltinCorpus ? "synthetic dev" : c.dev, "\(maxPositions) tokens, model.max_positions")
        report(encodedTest, c.usesBuiltinCorpus ? "synthetic test" : c.test, "\(maxPositions) tokens, model.max_positions")
        var data = TranslationData(tasks: tasks, tokenizer: tokenizer, train: encodedTrain, dev: encodedDev,
                                   test: encodedTest, devPairs: encodedDev.keptIndices.map { dev[$0] },
                                   testPairs: encodedTest.keptIndices.map { test[$0] })
        data.warnings = warnings
        return data
    }
}
