import Foundation

/// Cleaning and filtering of candidate sentence pairs (source, English), as DATA.md lists:
/// multi-line texts are split line by line when both sides have the same number of lines
/// (joined with spaces otherwise); mnemonic markers (`_File`, `&Open`) are removed; pairs
/// that are empty, identical, whose English has fewer than `minimumEnglishWords` words
/// once format specifiers are removed, or with more than `maximumTokens` whitespace
/// tokens (or `maximumCharacters` characters) on a side are dropped.
public struct PairFilter: Sendable {
    public var minimumEnglishWords = 2
    public var maximumTokens = 80
    public var maximumCharacters = 400

    /// Why a pair was dropped (counted in the build statistics).
    public enum Rejection: String, CaseIterable, Sendable {
        case empty, identical, shortEnglish = "short-english", long, replacementCharacter = "replacement-character"
    }

    public init(minimumEnglishWords: Int = 2) { self.minimumEnglishWords = minimumEnglishWords }

    /// Splits one raw pair into cleaned line pairs (before ``check(source:english:)``).
    public func lines(source: String, english: String) -> [(source: String, english: String)] {
        let s = PairFilter.splitLines(source), e = PairFilter.splitLines(english)
        if s.count == e.count {
            return zip(s, e).map { (PairFilter.clean($0), PairFilter.clean($1)) }
        }
        return [(PairFilter.clean(s.joined(separator: " ")), PairFilter.clean(e.joined(separator: " ")))]
    }

    /// nil when the pair passes, else why it does not.
    public func check(source: String, english: String) -> Rejection? {
        if source.isEmpty || english.isEmpty { return .empty }
        if source == english { return .identical }
        if source.contains("\u{FFFD}") || english.contains("\u{FFFD}") { return .replacementCharacter }
        for side in [source, english] {
            if side.count > maximumCharacters || side.split(separator: " ").count > maximumTokens { return .long }
        }
        if PairFilter.words(PairFilter.removingFormatSpecifiers(english)) < minimumEnglishWords { return .shortEnglish }
        return nil
    }

    static func splitLines(_ s: String) -> [String] {
        s.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
            .map(String.init)
            .filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
    }

    /// Removes mnemonics, turns tabs and other whitespace into single spaces, trims.
    public static func clean(_ s: String) -> String {
        collapseSpaces(removingMnemonics(s))
    }

    /// Collapses every run of whitespace (tabs, line breaks, no-break spaces ...) into one space and trims.
    public static func collapseSpaces(_ s: String) -> String {
        var out = ""
        var pendingSpace = false
        for c in s {
            if c.isWhitespace {
                pendingSpace = !out.isEmpty
            } else {
                if pendingSpace { out.append(" "); pendingSpace = false }
                out.append(c)
            }
        }
        return out
    }

    /// Removes `_` or `&` marking a keyboard mnemonic: directly before a letter or digit at
    /// the start of a word (`_File` → `File`, `Save &As` → `Save As`, `&&` → `&`), and the
    /// CJK style `(_F)` / `(&F)` suffix. `snake_case` and `a & b` stay.
    public static func removingMnemonics(_ s: String) -> String {
        var chars = Array(s)
        // "(_F)" / "(&F)" suffixes used by CJK translations
        var i = 0
        var out: [Character] = []
        while i < chars.count {
            if chars[i] == "(", i + 3 < chars.count, chars[i + 1] == "_" || chars[i + 1] == "&",
               chars[i + 2].isLetter || chars[i + 2].isNumber, chars[i + 3] == ")" {
                while out.last == " " { out.removeLast() }
                i += 4
                continue
            }
            out.append(chars[i])
            i += 1
        }
        chars = out
        out = []
        i = 0
        while i < chars.count {
            let c = chars[i]
            if c == "&", i + 1 < chars.count, chars[i + 1] == "&" { out.append("&"); i += 2; continue }
            if c == "_" || c == "&", i + 1 < chars.count, chars[i + 1].isLetter || chars[i + 1].isNumber,
               i == 0 || !(chars[i - 1].isLetter || chars[i - 1].isNumber || chars[i - 1] == "_") {
                i += 1
                continue
            }
            out.append(c)
            i += 1
        }
        return String(out)
    }

    /// Removes printf conversions (`%s`, `%1$d`, `%-10.3lf`, `%%`), `{0}` / `{name}` and
    /// `${var}` placeholders.
    public static func removingFormatSpecifiers(_ s: String) -> String {
        let chars = Array(s)
        var out: [Character] = []
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if c == "%" {
                var j = i + 1
                while j < chars.count, "0123456789$-+#'.*".contains(chars[j]), j - i < 12 { j += 1 }
                while j < chars.count, "hlLqjzt".contains(chars[j]) { j += 1 }
                if j < chars.count, "diouxXeEfFgGaAcspn%".contains(chars[j]) { i = j + 1; out.append(" "); continue }
            }
            if c == "{" || (c == "$" && i + 1 < chars.count && chars[i + 1] == "{") {
                let start = c == "$" ? i + 2 : i + 1
                var j = start
                while j < chars.count, chars[j].isLetter || chars[j].isNumber || chars[j] == "_" { j += 1 }
                if j < chars.count, chars[j] == "}" { i = j + 1; out.append(" "); continue }
            }
            out.append(c)
            i += 1
        }
        return String(out)
    }

    /// Words: whitespace-separated tokens holding at least one letter.
    static func words(_ s: String) -> Int {
        s.split(whereSeparator: \.isWhitespace).filter { $0.contains(where: \.isLetter) }.count
    }
}
