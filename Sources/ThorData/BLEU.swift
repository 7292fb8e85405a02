import Foundation

/// Sufficient statistics of corpus BLEU (one reference per segment): they add up
/// over segments, so per-task and whole-corpus scores come from the same counts.
public struct BLEUStatistics: Sendable, Equatable {
    /// Hypothesis length in 13a tokens.
    public var hypothesisLength: Int
    /// Reference length in 13a tokens.
    public var referenceLength: Int
    /// Clipped n-gram matches, n = 1...4.
    public var correct: [Int]
    /// Hypothesis n-grams, n = 1...4.
    public var total: [Int]

    /// All-zero statistics.
    public init() {
        hypothesisLength = 0; referenceLength = 0
        correct = Array(repeating: 0, count: SacreBLEU.maxNgramOrder)
        total = Array(repeating: 0, count: SacreBLEU.maxNgramOrder)
    }

    /// Adds another segment's (or corpus') statistics.
    public mutating func add(_ other: BLEUStatistics) {
        hypothesisLength += other.hypothesisLength
        referenceLength += other.referenceLength
        for n in 0..<correct.count { correct[n] += other.correct[n]; total[n] += other.total[n] }
    }
}

/// A BLEU score with the numbers sacreBLEU prints.
public struct BLEUScore: Sendable, Equatable, CustomStringConvertible {
    /// BLEU in [0, 100].
    public var score: Double
    /// Matched n-grams per order.
    public var counts: [Int]
    /// Hypothesis n-grams per order.
    public var totals: [Int]
    /// n-gram precisions in percent (smoothed where a count is zero).
    public var precisions: [Double]
    /// Brevity penalty.
    public var brevityPenalty: Double
    /// Hypothesis length (13a tokens).
    public var hypothesisLength: Int
    /// Reference length (13a tokens).
    public var referenceLength: Int

    /// hyp_len / ref_len (0 when the reference is empty), as sacreBLEU.
    public var ratio: Double { referenceLength == 0 ? 0 : Double(hypothesisLength) / Double(referenceLength) }

    /// sacreBLEU's text line (Python API `str(score)`, width 2):
    /// `BLEU = 23.45 56.7/30.1/17.0/10.0 (BP = 1.000 ratio = 1.020 hyp_len = 51 ref_len = 50)`.
    public var description: String { line() }

    /// The part after the score: `56.7/30.1/17.0/10.0 (BP = 1.000 ratio = 1.020 hyp_len = 51 ref_len = 50)`.
    public var verbose: String {
        let prec = precisions.map { String(format: "%.1f", $0) }.joined(separator: "/")
        return "\(prec) (BP = \(String(format: "%.3f", brevityPenalty)) "
            + "ratio = \(String(format: "%.3f", ratio)) hyp_len = \(hypothesisLength) ref_len = \(referenceLength))"
    }

    /// The score line with `width` decimals; with a signature, the `BLEU|<signature> = ...`
    /// form of `sacrebleu -f text` (whose default width is 1).
    public func line(signature: String? = nil, width: Int = 2) -> String {
        let name = signature.map { "BLEU|\($0)" } ?? "BLEU"
        return "\(name) = \(String(format: "%.\(width)f", score)) \(verbose)"
    }

    /// sacreBLEU's `-f json` output (`sacrebleu REF -i HYP -m bleu`, default width 1).
    public func json(signature: String = SacreBLEU.signature, width: Int = 1) -> String {
        var lines = [
            "{",
            " \"name\": \"BLEU\",",
            " \"score\": \(pythonFloatRepr(Double(String(format: "%.\(width)f", score))!)),",
            " \"signature\": \"\(signature)\",",
            " \"verbose_score\": \"\(verbose)\",",
        ]
        let pairs = signature.split(separator: "|").map { $0.split(separator: ":", maxSplits: 1) }
        for (i, kv) in pairs.enumerated() where kv.count == 2 {
            lines.append(" \"\(kv[0])\": \"\(kv[1])\"" + (i + 1 < pairs.count ? "," : ""))
        }
        lines.append("}")
        return lines.joined(separator: "\n")
    }
}

/// Python's repr of a float that came from a 2-decimal string (e.g. `23.45`, `0.0`, `100.0`).
private func pythonFloatRepr(_ x: Double) -> String {
    var s = "\(x)"
    if !s.contains(".") && !s.contains("e") { s += ".0" }
    return s
}

/// Corpus BLEU exactly as sacreBLEU 2.6.0 computes it with its defaults:
/// one reference, 13a tokenizer, mixed case, exp smoothing, max order 4,
/// no effective order (`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`).
///
/// Each line is `rstrip`ped (Python whitespace) and tokenized by ``Tokenizer13a``;
/// tokens and n-grams compare code point by code point (no Unicode normalization).
public enum SacreBLEU {
    /// Maximum n-gram order.
    public static let maxNgramOrder = 4
    /// sacreBLEU's signature for the score this type computes.
    public static let signature = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"

    /// Errors reading or pairing hypothesis and reference files.
    public enum Failure: Error, CustomStringConvertible, Equatable {
        case lineCountMismatch(hypotheses: Int, references: Int)
        case unreadable(path: String, reason: String)
        case invalidUTF8(path: String, line: Int)

        public var description: String {
            switch self {
            case let .lineCountMismatch(h, r):
                return "BLEU: the hypotheses have \(h) lines but the references have \(r)"
            case let .unreadable(path, reason):
                return "BLEU: cannot read \(path): \(reason)"
            case let .invalidUTF8(path, line):
                return "BLEU: \(path) line \(line) is not valid UTF-8"
            }
        }
    }

    /// Corpus BLEU of `hypotheses` against one reference each.
    public static func corpusScore(hypotheses: [String], references: [String]) throws -> BLEUScore {
        guard hypotheses.count == references.count else {
            throw Failure.lineCountMismatch(hypotheses: hypotheses.count, references: references.count)
        }
        var stats = BLEUStatistics()
        for (h, r) in zip(hypotheses, references) { stats.add(statistics(hypothesis: h, reference: r)) }
        return score(stats)
    }

    /// Statistics of one segment (hypothesis against its reference).
    public static func statistics(hypothesis: String, reference: String) -> BLEUStatistics {
        var interner: [[UInt8]: Int] = [:]
        func ids(_ line: String) -> [Int] {
            let toks = Tokenizer13a.tokenScalars(pythonRStrip(Array(line.unicodeScalars)))
            return toks.map { t in
                var bytes: [UInt8] = []
                for c in t { bytes.append(contentsOf: UTF8.encode(c)!) }
                if let id = interner[bytes] { return id }
                let id = interner.count
                interner[bytes] = id
                return id
            }
        }
        let hyp = ids(hypothesis), ref = ids(reference)
        let refCounts = ngramCounts(ref)
        let hypCounts = ngramCounts(hyp)
        var stats = BLEUStatistics()
        stats.hypothesisLength = hyp.count
        stats.referenceLength = ref.count
        for (gram, count) in hypCounts {
            let n = gram.count - 1
            stats.total[n] += count
            if let rc = refCounts[gram] { stats.correct[n] += min(count, rc) }
        }
        return stats
    }

    private static func ngramCounts(_ tokens: [Int]) -> [[Int]: Int] {
        var counts: [[Int]: Int] = [:]
        for n in 1...maxNgramOrder where tokens.count >= n {
            for i in 0...(tokens.count - n) { counts[Array(tokens[i..<(i + n)]), default: 0] += 1 }
        }
        return counts
    }

    /// BLEU from aggregated statistics (sacreBLEU's `compute_bleu` with exp smoothing).
    /// `effectiveOrder: true` is sacreBLEU's sentence-BLEU setting (`eff:yes`).
    public static func score(_ stats: BLEUStatistics, effectiveOrder: Bool = false) -> BLEUScore {
        let sys = stats.hypothesisLength, ref = stats.referenceLength
        var bp = 1.0
        if sys < ref { bp = sys > 0 ? exp(1 - Double(ref) / Double(sys)) : 0.0 }
        var precisions = Array(repeating: 0.0, count: maxNgramOrder)
        var result = BLEUScore(score: 0, counts: stats.correct, totals: stats.total, precisions: precisions,
                               brevityPenalty: bp, hypothesisLength: sys, referenceLength: ref)
        guard stats.correct.contains(where: { $0 != 0 }) else { return result }
        var smooth = 1.0
        var effOrder = maxNgramOrder
        for n in 1...maxNgramOrder {
            let total = stats.total[n - 1], correct = stats.correct[n - 1]
            if total == 0 { break }
            if effectiveOrder { effOrder = n }
            if correct == 0 {
                smooth *= 2
                precisions[n - 1] = 100.0 / (smooth * Double(total))
            } else {
                precisions[n - 1] = 100.0 * Double(correct) / Double(total)
            }
        }
        // Python: sum(my_log(p) for p in precisions[:eff_order]) / eff_order, summed left to right from 0.
        var logSum = 0.0
        for p in precisions[0..<effOrder] { logSum += p == 0 ? -9_999_999_999 : log(p) }
        result.precisions = precisions
        result.score = bp * exp(logSum / Double(effOrder))
        return result
    }

    /// The lines of a text file as sacreBLEU's command line reads them: UTF-8,
    /// split on `\n` only, trailing Python whitespace removed; a final newline adds no line.
    public static func readLines(path: String) throws -> [String] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw Failure.unreadable(path: path, reason: error.localizedDescription)
        }
        var lines: [String] = []
        var start = data.startIndex
        var number = 0
        func take(_ end: Data.Index) throws {
            number += 1
            guard let s = String(validating: data[start..<end], as: UTF8.self) else {
                throw Failure.invalidUTF8(path: path, line: number)
            }
            var v = String.UnicodeScalarView()
            v.append(contentsOf: pythonRStrip(Array(s.unicodeScalars)))
            lines.append(String(v))
        }
        while let nl = data[start...].firstIndex(of: 0x0A) {
            try take(nl)
            start = data.index(after: nl)
        }
        if start < data.endIndex { try take(data.endIndex) }
        return lines
    }
}
