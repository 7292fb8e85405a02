/// sacreBLEU's default `13a` tokenizer (mteval-v13a), reproduced code point for code point.
///
/// sacreBLEU 2.6.0 (`tokenizers/tokenizer_13a.py` + `tokenizer_re.py`) does, in order:
/// 1. remove `<skipped>`, remove `-\n`, replace `\n` by a space;
/// 2. if the line holds `&`: `&quot;`→`"`, `&amp;`→`&`, `&lt;`→`<`, `&gt;`→`>` (in that order);
/// 3. pad the line with one space on each side, then four regex substitutions:
///    - every ASCII symbol in `{|}~ [\]^_\` space !"#$%& ()*+ :;<=>?@ /` becomes ` c `;
///    - `([^0-9])([.,])` → `\1 \2 ` (period/comma not preceded by a digit);
///    - `([.,])([^0-9])` → ` \1 \2` (period/comma not followed by a digit);
///    - `([0-9])(-)` → `\1 \2 ` (dash after a digit);
/// 4. split on Python whitespace and join with single spaces.
///
/// Everything works on Unicode scalars (Python code points), never on Swift
/// `Character`s: a combining mark after a period is its own code point, and
/// non-ASCII punctuation (e.g. `…`, `„`, `—`) is not split, exactly as in sacreBLEU.
/// `[^0-9]` matches any non-ASCII-digit code point, so `٣.` (Arabic digit) splits.
public enum Tokenizer13a {
    /// The tokenized line as sacreBLEU's `Tokenizer13a()(line)` returns it.
    public static func tokenize(_ line: String) -> String {
        joinedTokens(tokenScalars(Array(line.unicodeScalars)))
    }

    /// The tokens of `line` after 13a tokenization (as sacreBLEU's `line.split()`).
    public static func tokens(_ line: String) -> [String] {
        tokenScalars(Array(line.unicodeScalars)).map { scalars in
            var s = String.UnicodeScalarView()
            s.append(contentsOf: scalars)
            return String(s)
        }
    }

    /// The tokens as arrays of code points (no normalization).
    static func tokenScalars(_ input: [Unicode.Scalar]) -> [[Unicode.Scalar]] {
        var line = input
        line = replace(line, "<skipped>", "")
        line = replace(line, "-\n", "")
        line = replace(line, "\n", " ")
        if line.contains("&") {
            line = replace(line, "&quot;", "\"")
            line = replace(line, "&amp;", "&")
            line = replace(line, "&lt;", "<")
            line = replace(line, "&gt;", ">")
        }
        var padded: [Unicode.Scalar] = [" "]
        padded.reserveCapacity(line.count * 2 + 2)
        padded.append(contentsOf: line)
        padded.append(" ")

        // 1. ASCII symbols get spaces around them.
        var step1: [Unicode.Scalar] = []
        step1.reserveCapacity(padded.count * 2)
        for c in padded {
            if isSplitSymbol(c) { step1.append(" "); step1.append(c); step1.append(" ") } else { step1.append(c) }
        }
        // 2. ([^0-9])([.,]) -> "\1 \2 "
        let step2 = substitutePairs(step1) { a, b in
            !isASCIIDigit(a) && isPeriodOrComma(b)
        } replacement: { a, b in [a, " ", b, " "] }
        // 3. ([.,])([^0-9]) -> " \1 \2"
        let step3 = substitutePairs(step2) { a, b in
            isPeriodOrComma(a) && !isASCIIDigit(b)
        } replacement: { a, b in [" ", a, " ", b] }
        // 4. ([0-9])(-) -> "\1 \2 "
        let step4 = substitutePairs(step3) { a, b in
            isASCIIDigit(a) && b == "-"
        } replacement: { a, b in [a, " ", b, " "] }
        return pythonSplit(step4)
    }

    static func joinedTokens(_ tokens: [[Unicode.Scalar]]) -> String {
        var out = String.UnicodeScalarView()
        for (i, t) in tokens.enumerated() {
            if i > 0 { out.append(" ") }
            out.append(contentsOf: t)
        }
        return String(out)
    }

    /// `re.sub` of a two-code-point pattern: scan left to right, replace each
    /// non-overlapping match, continue after it (Python's semantics).
    @inline(__always)
    static func substitutePairs(_ s: [Unicode.Scalar],
                                matches: (Unicode.Scalar, Unicode.Scalar) -> Bool,
                                replacement: (Unicode.Scalar, Unicode.Scalar) -> [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(s.count + s.count / 2)
        var i = 0
        while i < s.count {
            if i + 1 < s.count && matches(s[i], s[i + 1]) {
                out.append(contentsOf: replacement(s[i], s[i + 1]))
                i += 2
            } else {
                out.append(s[i])
                i += 1
            }
        }
        return out
    }

    /// Python's `str.replace(old, new)`: non-overlapping, left to right.
    static func replace(_ s: [Unicode.Scalar], _ old: String, _ new: String) -> [Unicode.Scalar] {
        let o = Array(old.unicodeScalars), n = Array(new.unicodeScalars)
        guard !o.isEmpty, s.count >= o.count, s.contains(o[0]) else { return s }
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(s.count)
        var i = 0
        while i < s.count {
            if i + o.count <= s.count && s[i] == o[0] && Array(s[i..<(i + o.count)]) == o {
                out.append(contentsOf: n)
                i += o.count
            } else {
                out.append(s[i])
                i += 1
            }
        }
        return out
    }

    @inline(__always) static func isASCIIDigit(_ c: Unicode.Scalar) -> Bool { c.value >= 0x30 && c.value <= 0x39 }
    @inline(__always) static func isPeriodOrComma(_ c: Unicode.Scalar) -> Bool { c == "." || c == "," }

    /// `[\{-\~\[-\` -\&\(-\+\:-\@\/]`
    @inline(__always) static func isSplitSymbol(_ c: Unicode.Scalar) -> Bool {
        let v = c.value
        return (v >= 0x7B && v <= 0x7E) || (v >= 0x5B && v <= 0x60) || (v >= 0x20 && v <= 0x26)
            || (v >= 0x28 && v <= 0x2B) || (v >= 0x3A && v <= 0x40) || v == 0x2F
    }
}

/// Python's `str.isspace()` set, used by `str.split()` and `str.rstrip()`.
@inline(__always)
func isPythonWhitespace(_ c: Unicode.Scalar) -> Bool {
    switch c.value {
    case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
        return true
    default:
        return false
    }
}

/// Python's `str.split()` (no argument) on code points.
func pythonSplit(_ s: [Unicode.Scalar]) -> [[Unicode.Scalar]] {
    var tokens: [[Unicode.Scalar]] = []
    var current: [Unicode.Scalar] = []
    for c in s {
        if isPythonWhitespace(c) {
            if !current.isEmpty { tokens.append(current); current.removeAll(keepingCapacity: true) }
        } else {
            current.append(c)
        }
    }
    if !current.isEmpty { tokens.append(current) }
    return tokens
}

/// Python's `str.rstrip()` on code points.
func pythonRStrip(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
    var end = s.count
    while end > 0 && isPythonWhitespace(s[end - 1]) { end -= 1 }
    return end == s.count ? s : Array(s[0..<end])
}
