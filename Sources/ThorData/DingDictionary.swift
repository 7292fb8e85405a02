import Foundation

/// The Ding German–English dictionary (Debian `trans-de-en`, `/usr/share/trans/de-en`).
///
/// One entry per line, `German :: English`; `#` lines are comments. Each side holds
/// sub-entries separated by ` | ` (aligned one to one), and a sub-entry holds
/// alternatives separated by `; `. Annotations: `{n}` (grammar), `[coll.]` (usage or
/// subject), `(...)` (explanations), `<...>` (search keys), `/ABBR/` (abbreviations).
///
/// ``exampleSentences(in:)`` returns the sub-entries that are whole sentences on both
/// sides (the "conversation" domain): a capital letter first, sentence punctuation last,
/// at least three words, no grammar annotation; the first alternative of each side, with
/// `[...]`, `<...>` and `/.../` annotations removed.
public enum DingDictionary {
    /// One aligned German/English sentence.
    public struct Sentence: Sendable, Equatable {
        public var german: String
        public var english: String
        /// 1-based line of the dictionary file.
        public var line: Int
    }

    /// Reads the dictionary file at `path`.
    public static func exampleSentences(path: String) throws -> [Sentence] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw CorpusFileError(path: path, line: 0, reason: "cannot read the dictionary (\(error.localizedDescription))")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw CorpusFileError(path: path, line: 0, reason: "the dictionary is not valid UTF-8")
        }
        return exampleSentences(in: text)
    }

    /// The example sentences of a dictionary text, in file order.
    public static func exampleSentences(in text: String) -> [Sentence] {
        var sentences: [Sentence] = []
        var lineNumber = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.hasPrefix("#") || line.isEmpty { continue }
            let sides = line.components(separatedBy: " :: ")
            guard sides.count == 2 else { continue }
            let german = sides[0].components(separatedBy: " | ")
            let english = sides[1].components(separatedBy: " | ")
            guard german.count == english.count else { continue }
            for (g, e) in zip(german, english) {
                guard let gs = sentence(g, german: true), let es = sentence(e, german: false) else { continue }
                sentences.append(Sentence(german: gs, english: es, line: lineNumber))
            }
        }
        return sentences
    }

    /// The first alternative of a sub-entry, cleaned, when it is a whole sentence.
    static func sentence(_ subEntry: String, german: Bool) -> String? {
        if subEntry.contains("{") { return nil }  // grammar annotations mark headwords, not sentences
        let first = subEntry.components(separatedBy: "; ").first ?? subEntry
        let cleaned = removeAnnotations(first)
        guard let head = cleaned.unicodeScalars.first, let last = cleaned.last else { return nil }
        guard CharacterSet.uppercaseLetters.contains(head) || (german && CharacterSet.decimalDigits.contains(head)) else { return nil }
        guard ".?!".contains(last) else { return nil }
        guard cleaned.split(separator: " ").count >= 3 else { return nil }
        return cleaned
    }

    /// Removes `[...]`, `<...>` and `/.../` annotations and collapses spaces.
    static func removeAnnotations(_ s: String) -> String {
        var out = ""
        var skipUntil: Character? = nil
        let chars = Array(s)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if let end = skipUntil {
                if c == end { skipUntil = nil }
                i += 1
                continue
            }
            switch c {
            case "[": skipUntil = "]"
            case "<": skipUntil = ">"
            case "/" where (i == 0 || chars[i - 1] == " ") && chars[(i + 1)...].contains("/")
                && i + 1 < chars.count && chars[i + 1] != " ":
                skipUntil = "/"
            default: out.append(c)
            }
            i += 1
        }
        return PairFilter.collapseSpaces(out)
    }
}
