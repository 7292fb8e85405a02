/// Where the parallel text comes from and how it is tokenized (the `data` section).
///
/// With no `train` file the built-in synthetic multi-domain corpus is generated
/// from `training.seed` (docs/data.md). Corpus files are `task<TAB>source<TAB>target`.
public struct DataConfiguration: Sendable, Equatable {
    /// Training corpus file; empty: the built-in synthetic corpus.
    public var train: String = ""
    /// Dev and test corpus files (required with `train`).
    public var dev: String = ""
    public var test: String = ""
    /// Training pairs of the built-in corpus.
    public var syntheticPairs: Int = 20_000
    /// Dev and test pairs per domain of the built-in corpus.
    public var syntheticEvalPairsPerTask: Int = 100
    /// Byte-level BPE vocabulary size (learned from the training corpus).
    public var vocabularySize: Int = 1000
    /// Longest source or target in tokens (longer pairs are left out of training).
    public var maxLength: Int = 64

    public init() {}

    static let keys = ["train", "dev", "test", "synthetic_pairs", "synthetic_eval_pairs_per_task",
                       "vocabulary_size", "max_length"]

    init(reading value: JSONValue?, path: String) throws {
        let r = try SectionReader(value, path: path, allowed: Self.keys)
        train = try r.string("train", default: "") ?? ""
        dev = try r.string("dev", default: "") ?? ""
        test = try r.string("test", default: "") ?? ""
        syntheticPairs = try r.int("synthetic_pairs", default: 20_000)
        syntheticEvalPairsPerTask = try r.int("synthetic_eval_pairs_per_task", default: 100)
        vocabularySize = try r.int("vocabulary_size", default: 1000)
        maxLength = try r.int("max_length", default: 64)
    }

    var json: JSONValue {
        func i(_ v: Int) -> JSONValue { .number(Double(v)) }
        return .object([
            "train": .string(train), "dev": .string(dev), "test": .string(test),
            "synthetic_pairs": i(syntheticPairs), "synthetic_eval_pairs_per_task": i(syntheticEvalPairsPerTask),
            "vocabulary_size": i(vocabularySize), "max_length": i(maxLength),
        ])
    }

    /// True when the built-in synthetic corpus is used.
    public var usesBuiltinCorpus: Bool { train.isEmpty }

    public func validate(path: String = "data") throws {
        func p(_ k: String) -> String { "\(path).\(k)" }
        if !train.isEmpty {
            try Check.require(!dev.isEmpty, p("dev"), "a dev corpus file is required with `train`")
            try Check.require(!test.isEmpty, p("test"), "a test corpus file is required with `train`")
        }
        try Check.require(syntheticPairs >= 1, p("synthetic_pairs"), "must be ≥ 1, got \(syntheticPairs)")
        try Check.require(syntheticEvalPairsPerTask >= 1, p("synthetic_eval_pairs_per_task"), "must be ≥ 1, got \(syntheticEvalPairsPerTask)")
        try Check.require(vocabularySize >= 260 && vocabularySize <= 1_000_000, p("vocabulary_size"),
                          "must be in 260...1000000 (4 special tokens + 256 bytes + merges), got \(vocabularySize)")
        try Check.require(maxLength >= 4, p("max_length"), "must be ≥ 4, got \(maxLength)")
    }
}

/// How translations are produced for dev/test scoring (the `evaluation` section).
public struct EvaluationConfiguration: Sendable, Equatable {
    /// 1: greedy search; more: beam search.
    public var beamSize: Int = 1
    /// Beam-search length penalty α (`score / length^α`).
    public var lengthPenalty: Float = 1
    /// Longest output in tokens.
    public var maxOutputLength: Int = 64
    /// Dev sentences translated for BLEU at each dev evaluation (0: all).
    public var devSentences: Int = 200

    public init() {}

    static let keys = ["beam_size", "length_penalty", "max_output_length", "dev_sentences"]

    init(reading value: JSONValue?, path: String) throws {
        let r = try SectionReader(value, path: path, allowed: Self.keys)
        beamSize = try r.int("beam_size", default: 1)
        lengthPenalty = try r.float("length_penalty", default: 1)
        maxOutputLength = try r.int("max_output_length", default: 64)
        devSentences = try r.int("dev_sentences", default: 200)
    }

    var json: JSONValue {
        .object(["beam_size": .number(Double(beamSize)), "length_penalty": .number(lengthPenalty),
                 "max_output_length": .number(Double(maxOutputLength)), "dev_sentences": .number(Double(devSentences))])
    }

    public func validate(path: String = "evaluation") throws {
        try Check.require(beamSize >= 1, "\(path).beam_size", "must be ≥ 1 (1: greedy), got \(beamSize)")
        try Check.require(lengthPenalty >= 0, "\(path).length_penalty", "must be ≥ 0, got \(lengthPenalty)")
        try Check.require(maxOutputLength >= 1, "\(path).max_output_length", "must be ≥ 1, got \(maxOutputLength)")
        try Check.require(devSentences >= 0, "\(path).dev_sentences", "must be ≥ 0 (0: all), got \(devSentences)")
    }
}
