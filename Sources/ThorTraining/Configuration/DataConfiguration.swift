import ThorTensor

/// Where the parallel text comes from and how it is tokenized (the `data` section).
///
/// With no `train` file the built-in synthetic multi-domain corpus is generated
/// from `training.seed` (docs/data.md). Corpus files are `task<TAB>source<TAB>target`.
/// Defaults: the property initializers (the only place they are written).
public struct DataConfiguration: ConfigurationSection {
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

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case train, dev, test, syntheticPairs = "synthetic_pairs"
        case syntheticEvalPairsPerTask = "synthetic_eval_pairs_per_task"
        case vocabularySize = "vocabulary_size", maxLength = "max_length"
    }

    /// True when the built-in synthetic corpus is used.
    public var usesBuiltinCorpus: Bool { train.isEmpty }

    public func validate(path: String = "data") throws {
        func p(_ k: CodingKeys) -> String { "\(path).\(k.stringValue)" }
        if !train.isEmpty {
            try Check.require(!dev.isEmpty, p(.dev), "a dev corpus file is required with `train`")
            try Check.require(!test.isEmpty, p(.test), "a test corpus file is required with `train`")
        }
        try Check.require(syntheticPairs >= 1, p(.syntheticPairs), "must be ≥ 1, got \(syntheticPairs)")
        try Check.require(syntheticEvalPairsPerTask >= 1, p(.syntheticEvalPairsPerTask), "must be ≥ 1, got \(syntheticEvalPairsPerTask)")
        try Check.require(vocabularySize >= 260 && vocabularySize <= 1_000_000, p(.vocabularySize),
                          "must be in 260...1000000 (4 special tokens + 256 bytes + merges), got \(vocabularySize)")
        try Check.require(maxLength >= 4, p(.maxLength), "must be ≥ 4, got \(maxLength)")
    }
}
