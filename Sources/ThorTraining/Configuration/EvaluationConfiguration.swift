import ThorTensor

/// How translations are produced for dev/test scoring (the `evaluation` section).
/// Defaults: the property initializers.
public struct EvaluationConfiguration: ConfigurationSection {
    /// 1: greedy search; more: beam search.
    public var beamSize: Int = 1
    /// Beam-search length penalty α (`score / length^α`).
    public var lengthPenalty: Float = 1
    /// Longest output in tokens.
    public var maxOutputLength: Int = 64
    /// Dev sentences translated for BLEU at each dev evaluation (0: all).
    public var devSentences: Int = 200

    public init() {}

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case beamSize = "beam_size", lengthPenalty = "length_penalty"
        case maxOutputLength = "max_output_length", devSentences = "dev_sentences"
    }

    public func validate(path: String = "evaluation") throws {
        func p(_ k: CodingKeys) -> String { "\(path).\(k.stringValue)" }
        try Check.require(beamSize >= 1, p(.beamSize), "must be ≥ 1 (1: greedy), got \(beamSize)")
        try Check.require(lengthPenalty >= 0, p(.lengthPenalty), "must be ≥ 0, got \(lengthPenalty)")
        try Check.require(maxOutputLength >= 1, p(.maxOutputLength), "must be ≥ 1, got \(maxOutputLength)")
        try Check.require(devSentences >= 0, p(.devSentences), "must be ≥ 0 (0: all), got \(devSentences)")
    }
}
