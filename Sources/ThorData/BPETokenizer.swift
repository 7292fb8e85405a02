import Foundation

/// Token ids fixed in every vocabulary.
public enum SpecialTokens {
    /// Padding, `<pad>`.
    public static let pad: Int32 = 0
    /// Beginning of the decoder input, `<s>`.
    public static let bos: Int32 = 1
    /// End of sentence, `</s>`.
    public static let eos: Int32 = 2
    /// Sentence-level token at the start of the source, `[CLS]`.
    public static let cls: Int32 = 3
    /// Their surface strings, by id.
    public static let names = ["<pad>", "<s>", "</s>", "[CLS]"]
    /// Number of fixed special tokens; tag tokens follow them.
    public static let count = 4
}

/// Errors of tokenizer files and training.
public struct TokenizerError: Error, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Byte-level BPE: ids `0..<4` are the special tokens (``SpecialTokens``), then the
/// tag tokens (e.g. `<2de>`, never produced from text), then the 256 bytes, then one
/// token per learned merge. Any UTF-8 text encodes losslessly: unknown text falls
/// back to bytes, so there is no `<unk>`.
///
/// Pre-tokenization (GPT-2-like, on bytes): a piece is an optional single leading
/// space followed by a run of one class — letters (ASCII letters and every byte ≥ 0x80),
/// digits, or other symbols; remaining whitespace forms its own pieces. Merges never
/// cross pieces. Learning merges the most frequent adjacent pair (ties: the lower
/// pair of ids), all non-overlapping occurrences left to right, until the vocabulary
/// reaches the target size or no pair occurs twice.
///
/// File format (`save`/`load`), UTF-8 text:
///
///     thor-bpe 1
///     tags <2de> <2fr>          (the word "tags" then the tag tokens, space-separated; may be empty)
///     merges N
///     L R                       (N lines: the two token ids merged into id 4 + tags + 256 + line index)
public struct BPETokenizer: Sendable, Equatable {
    /// Tag tokens (task or language tags), ids `4..<4+tags.count`.
    public let tags: [String]
    /// Learned merges in order; merge `i` creates id `byteOffset + 256 + i`.
    public let merges: [(Int32, Int32)]
    /// Byte sequence of every id (empty for special and tag tokens).
    private let tokenBytes: [[UInt8]]
    /// Merge rank by pair key.
    private let ranks: [UInt64: Int32]

    /// The id of byte 0.
    public var byteOffset: Int32 { Int32(SpecialTokens.count + tags.count) }
    /// Total number of tokens.
    public var vocabularySize: Int { tokenBytes.count }

    public static func == (a: BPETokenizer, b: BPETokenizer) -> Bool {
        a.tags == b.tags && a.merges.elementsEqual(b.merges, by: { $0 == $1 })
    }

    /// A tokenizer with the given tags and merges (ids must refer to earlier tokens).
    public init(tags: [String] = [], merges: [(Int32, Int32)] = []) throws {
        var seen = Set<String>()
        for t in tags {
            guard !t.isEmpty, !t.unicodeScalars.contains(where: { $0.properties.isWhitespace }) else {
                throw TokenizerError("tag token '\(t)' is empty or holds whitespace")
            }
            guard seen.insert(t).inserted, !SpecialTokens.names.contains(t) else {
                throw TokenizerError("tag token '\(t)' is duplicated or clashes with a special token")
            }
        }
        self.tags = tags
        let offset = SpecialTokens.count + tags.count
        var bytes = Array(repeating: [UInt8](), count: offset)
        for b in 0..<256 { bytes.append([UInt8(b)]) }
        var ranks: [UInt64: Int32] = [:]
        for (i, (l, r)) in merges.enumerated() {
            guard l >= Int32(offset), r >= Int32(offset), Int(l) < bytes.count, Int(r) < bytes.count else {
                throw TokenizerError("merge \(i) (\(l) \(r)) refers to an id that is not a byte or an earlier merge")
            }
            let key = BPETokenizer.key(l, r)
            guard ranks[key] == nil else { throw TokenizerError("merge \(i) (\(l) \(r)) is duplicated") }
            ranks[key] = Int32(i)
            bytes.append(bytes[Int(l)] + bytes[Int(r)])
        }
        self.merges = merges
        self.tokenBytes = bytes
        self.ranks = ranks
    }

    @inline(__always) static func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(a)) << 32 | UInt64(UInt32(b)) }

    /// `symbols` with every non-overlapping adjacent pair (`l`, `r`), left to right, replaced by `merged`.
    static func merging(_ l: Int32, _ r: Int32, into merged: Int32, in symbols: [Int32]) -> [Int32] {
        var next: [Int32] = []
        next.reserveCapacity(symbols.count)
        var j = 0
        while j < symbols.count {
            if j + 1 < symbols.count && symbols[j] == l && symbols[j + 1] == r { next.append(merged); j += 2 }
            else { next.append(symbols[j]); j += 1 }
        }
        return next
    }

    /// The id of a tag token such as `<2de>`.
    public func tagID(_ tag: String) -> Int32? {
        tags.firstIndex(of: tag).map { Int32(SpecialTokens.count + $0) }
    }

    /// The surface of one token: the special/tag name, or its bytes (lossy if not UTF-8 alone).
    public func tokenString(_ id: Int32) -> String {
        if id >= 0 && Int(id) < SpecialTokens.count { return SpecialTokens.names[Int(id)] }
        if id >= Int32(SpecialTokens.count) && id < byteOffset { return tags[Int(id) - SpecialTokens.count] }
        guard id >= 0, Int(id) < tokenBytes.count else { return "<invalid \(id)>" }
        return String(decoding: tokenBytes[Int(id)], as: UTF8.self)
    }

    // MARK: Pre-tokenization

    @inline(__always) static func byteClass(_ b: UInt8) -> Int {
        if b == 0x20 || (b >= 0x09 && b <= 0x0D) { return 0 }          // whitespace
        if b >= 0x80 || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) { return 1 } // letters
        if b >= 0x30 && b <= 0x39 { return 2 }                           // digits
        return 3                                                        // other
    }

    /// Splits UTF-8 bytes into pre-tokenization pieces (their concatenation is the input).
    public static func pieces(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var out: [ArraySlice<UInt8>] = []
        var i = 0
        let n = bytes.count
        while i < n {
            let start = i
            let c = byteClass(bytes[i])
            if c == 0 {
                if bytes[i] == 0x20, i + 1 < n, byteClass(bytes[i + 1]) != 0 {
                    let k = byteClass(bytes[i + 1])
                    i += 2
                    while i < n && byteClass(bytes[i]) == k { i += 1 }
                } else {
                    while i < n && byteClass(bytes[i]) == 0 { i += 1 }
                    // leave a final single space to lead the next word
                    if i < n, i - start > 1, bytes[i - 1] == 0x20 { i -= 1 }
                }
            } else {
                while i < n && byteClass(bytes[i]) == c { i += 1 }
            }
            out.append(bytes[start..<i])
        }
        return out
    }

    // MARK: Encoding

    /// Applies the merges to one piece.
    private func encodePiece(_ piece: ArraySlice<UInt8>, into out: inout [Int32]) {
        var symbols = piece.map { byteOffset + Int32($0) }
        while symbols.count > 1 {
            var best = Int32.max
            for j in 0..<(symbols.count - 1) {
                if let r = ranks[BPETokenizer.key(symbols[j], symbols[j + 1])], r < best { best = r }
            }
            if best == Int32.max { break }
            let (l, r) = merges[Int(best)]
            symbols = BPETokenizer.merging(l, r, into: byteOffset + 256 + best, in: symbols)
        }
        out.append(contentsOf: symbols)
    }

    /// Token ids of `text` (no special tokens added).
    public func encode(_ text: String) -> [Int32] {
        var out: [Int32] = []
        for p in BPETokenizer.pieces(Array(text.utf8)) { encodePiece(p, into: &out) }
        return out
    }

    /// Token ids of many texts, caching repeated pieces.
    public func encode(_ texts: [String]) -> [[Int32]] {
        var cache: [ArraySlice<UInt8>: [Int32]] = [:]
        return texts.map { text in
            var out: [Int32] = []
            for p in BPETokenizer.pieces(Array(text.utf8)) {
                if let ids = cache[p] { out += ids; continue }
                var ids: [Int32] = []
                encodePiece(p, into: &ids)
                cache[p] = ids
                out += ids
            }
            return out
        }
    }

    /// The UTF-8 bytes of `ids`; special and tag tokens are skipped (or rendered by name
    /// when `skipSpecial` is false). Invalid ids are skipped.
    public func decodeBytes(_ ids: [Int32], skipSpecial: Bool = true) -> [UInt8] {
        var bytes: [UInt8] = []
        for id in ids {
            guard id >= 0, Int(id) < tokenBytes.count else { continue }
            if id < byteOffset {
                if !skipSpecial { bytes += Array(tokenString(id).utf8) }
            } else {
                bytes += tokenBytes[Int(id)]
            }
        }
        return bytes
    }

    /// The text of `ids` (invalid UTF-8, e.g. from a model cut mid-character, becomes U+FFFD).
    public func decode(_ ids: [Int32], skipSpecial: Bool = true) -> String {
        String(decoding: decodeBytes(ids, skipSpecial: skipSpecial), as: UTF8.self)
    }

    // MARK: Learning

    /// Learns merges from `texts` until the vocabulary has `vocabularySize` tokens
    /// (or no adjacent pair occurs at least twice). Deterministic.
    public static func learn(from texts: [String], vocabularySize: Int, tags: [String] = []) throws -> BPETokenizer {
        let base = try BPETokenizer(tags: tags)
        guard vocabularySize >= base.vocabularySize else {
            throw TokenizerError("vocabulary size \(vocabularySize) is below the \(base.vocabularySize) special, tag and byte tokens")
        }
        let offset = base.byteOffset
        // Unique pieces with frequencies, in first-seen order.
        var pieceIndex: [ArraySlice<UInt8>: Int] = [:]
        var words: [[Int32]] = []
        var freqs: [Int] = []
        for text in texts {
            let bytes = Array(text.utf8)
            for p in pieces(bytes) {
                if let w = pieceIndex[p] { freqs[w] += 1; continue }
                pieceIndex[p] = words.count
                words.append(p.map { offset + Int32($0) })
                freqs.append(1)
            }
        }
        var pairCounts: [UInt64: Int] = [:]
        var pairWords: [UInt64: [Int]] = [:]
        for (w, word) in words.enumerated() where word.count > 1 {
            for j in 0..<(word.count - 1) {
                let k = key(word[j], word[j + 1])
                pairCounts[k, default: 0] += freqs[w]
                if pairWords[k]?.last != w { pairWords[k, default: []].append(w) }
            }
        }
        var heap = PairHeap()
        for (k, c) in pairCounts { heap.push(count: c, key: k) }
        var merges: [(Int32, Int32)] = []
        let wanted = vocabularySize - base.vocabularySize
        var changed: [UInt64: Bool] = [:]
        while merges.count < wanted, let top = heap.pop() {
            guard pairCounts[top.key] == top.count else { continue }  // stale entry
            if top.count < 2 { break }
            let l = Int32(truncatingIfNeeded: top.key >> 32), r = Int32(truncatingIfNeeded: top.key & 0xFFFF_FFFF)
            let newID = offset + 256 + Int32(merges.count)
            merges.append((l, r))
            changed.removeAll(keepingCapacity: true)
            for w in pairWords[top.key] ?? [] {
                let word = words[w]
                guard word.count > 1 else { continue }
                var has = false
                for j in 0..<(word.count - 1) where word[j] == l && word[j + 1] == r { has = true; break }
                if !has { continue }
                let f = freqs[w]
                for j in 0..<(word.count - 1) {
                    let k = key(word[j], word[j + 1]); pairCounts[k]! -= f; changed[k] = true
                }
                let next = merging(l, r, into: newID, in: word)
                words[w] = next
                if next.count > 1 {
                    for j in 0..<(next.count - 1) {
                        let k = key(next[j], next[j + 1])
                        pairCounts[k, default: 0] += f; changed[k] = true
                        if next[j] == newID || next[j + 1] == newID, pairWords[k]?.last != w { pairWords[k, default: []].append(w) }
                    }
                }
            }
            pairWords[top.key] = nil
            for k in changed.keys {
                let c = pairCounts[k]!
                if c <= 0 { pairCounts[k] = nil } else { heap.push(count: c, key: k) }
            }
        }
        return try BPETokenizer(tags: tags, merges: merges)
    }

    // MARK: Files

    /// The file text (see the type's documentation).
    public func serialized() -> String {
        var s = "thor-bpe 1\ntags" + tags.map { " " + $0 }.joined() + "\nmerges \(merges.count)\n"
        for (l, r) in merges { s += "\(l) \(r)\n" }
        return s
    }

    /// Parses a tokenizer file's text; `path` names it in errors.
    public static func parse(_ text: String, path: String = "<tokenizer>") throws -> BPETokenizer {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        func fail(_ line: Int, _ why: String) -> TokenizerError { TokenizerError("\(path):\(line): \(why)") }
        guard lines.count >= 3, lines[0] == "thor-bpe 1" else { throw fail(1, "not a thor-bpe 1 tokenizer file") }
        let tagFields = lines[1].split(separator: " ").map(String.init)
        guard tagFields.first == "tags" else { throw fail(2, "expected 'tags ...'") }
        let mf = lines[2].split(separator: " ")
        guard mf.count == 2, mf[0] == "merges", let n = Int(mf[1]), n >= 0 else { throw fail(3, "expected 'merges N'") }
        guard lines.count == 3 + n else { throw fail(3, "announces \(n) merges but the file has \(lines.count - 3)") }
        var merges: [(Int32, Int32)] = []
        merges.reserveCapacity(n)
        for i in 0..<n {
            let f = lines[3 + i].split(separator: " ")
            guard f.count == 2, let l = Int32(f[0]), let r = Int32(f[1]) else { throw fail(4 + i, "expected two token ids") }
            merges.append((l, r))
        }
        do { return try BPETokenizer(tags: Array(tagFields.dropFirst()), merges: merges) } catch let e as TokenizerError {
            throw TokenizerError("\(path): \(e.message)")
        }
    }

    /// Writes the tokenizer file atomically.
    public func save(to path: String) throws {
        do { try Data(serialized().utf8).write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
            throw TokenizerError("\(path): cannot write (\(error.localizedDescription))")
        }
    }

    /// Reads a tokenizer file.
    public static func load(from path: String) throws -> BPETokenizer {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw TokenizerError("\(path): cannot read (\(error.localizedDescription))")
        }
        guard let text = String(validating: data, as: UTF8.self) else { throw TokenizerError("\(path): not valid UTF-8") }
        return try parse(text, path: path)
    }
}

/// Max-heap of (count, pair key): higher count first, then the lower key.
struct PairHeap {
    private var items: [(count: Int, key: UInt64)] = []

    @inline(__always) private static func before(_ a: (count: Int, key: UInt64), _ b: (count: Int, key: UInt64)) -> Bool {
        a.count != b.count ? a.count > b.count : a.key < b.key
    }

    mutating func push(count: Int, key: UInt64) {
        items.append((count, key))
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if PairHeap.before(items[i], items[p]) { items.swapAt(i, p); i = p } else { break }
        }
    }

    mutating func pop() -> (count: Int, key: UInt64)? {
        guard !items.isEmpty else { return nil }
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count && PairHeap.before(items[l], items[m]) { m = l }
                if r < items.count && PairHeap.before(items[r], items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m); i = m
            }
        }
        return top
    }
}
