import Foundation

/// A structural problem in a gettext `.mo` file.
public struct MOCatalogError: Error, CustomStringConvertible, Equatable {
    /// The file (or a name given by the caller).
    public var name: String
    public var reason: String
    public var description: String { "\(name): \(reason)" }
}

/// A compiled gettext message catalog (`.mo`), parsed in full.
///
/// Layout (GNU gettext manual, "The Format of GNU MO Files"): a 32-bit magic
/// `0x950412de` written in the file's byte order (so read as `0xde120495` when the
/// other order was used), revision, number of strings N, offset of the original-string
/// table, offset of the translation table (each N pairs of 32-bit length and offset),
/// then the hash table, which is not needed to read every entry. Strings are
/// NUL-terminated; the length does not count the NUL.
///
/// - The entry with the empty msgid is the header; its `Content-Type: ...; charset=X`
///   names the charset of every string (vim ships `cp1251`, `cp936`, `iso-8859-x` ...).
/// - A msgid `context \u{4} id` carries a msgctxt.
/// - A plural entry's msgid is `singular \0 plural` and its msgstr holds the forms
///   separated by NULs; ``Entry`` keeps the singular and the first form.
/// - Fuzzy entries are never compiled into `.mo` files, so all entries are translations.
public struct MOCatalog: Sendable {
    /// One translated message.
    public struct Entry: Sendable, Equatable {
        /// msgctxt, when the message has one.
        public var context: String?
        /// msgid (the English text in the catalogs used here); for plurals, the singular.
        public var source: String
        /// msgstr; for plurals, the first form.
        public var translation: String
        /// True when the message had plural forms.
        public var isPlural: Bool

        public init(context: String?, source: String, translation: String, isPlural: Bool) {
            self.context = context; self.source = source; self.translation = translation; self.isPlural = isPlural
        }
    }

    /// The charset named by the header (`UTF-8` when there is no header or it names none).
    public let charset: String
    /// The header's msgstr (empty when there is none).
    public let header: String
    /// Every entry but the header, in file order (sorted by msgid, as msgfmt writes them).
    public let entries: [Entry]
    /// Entries dropped because their bytes were not valid in the catalog's charset.
    public let undecodable: Int

    /// Reads and parses the file at `path`.
    public init(path: String) throws {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw MOCatalogError(name: path, reason: "cannot read the file (\(error.localizedDescription))")
        }
        try self.init(data: data, name: path)
    }

    /// Parses the bytes of a `.mo` file; `name` is used in error messages.
    /// - Throws: ``MOCatalogError`` for a bad magic number, tables or strings outside the
    ///   file, or a charset iconv does not know.
    public init(data: Data, name: String = "<mo>") throws {
        let bytes = [UInt8](data)
        func fail(_ reason: String) -> MOCatalogError { MOCatalogError(name: name, reason: reason) }
        guard bytes.count >= 28 else { throw fail("too short for a .mo header (\(bytes.count) bytes)") }

        func word(_ at: Int, bigEndian: Bool) -> UInt32 {
            let b0 = UInt32(bytes[at]), b1 = UInt32(bytes[at + 1]), b2 = UInt32(bytes[at + 2]), b3 = UInt32(bytes[at + 3])
            return bigEndian ? (b0 << 24 | b1 << 16 | b2 << 8 | b3) : (b3 << 24 | b2 << 16 | b1 << 8 | b0)
        }
        let bigEndian: Bool
        switch word(0, bigEndian: false) {
        case 0x9504_12de: bigEndian = false
        case 0xde12_0495: bigEndian = true
        default: throw fail("not a .mo file (magic \(String(word(0, bigEndian: false), radix: 16)))")
        }
        let revision = word(4, bigEndian: bigEndian)
        guard revision >> 16 <= 1 else { throw fail("unsupported major revision \(revision >> 16)") }
        let count = Int(word(8, bigEndian: bigEndian))
        let originals = Int(word(12, bigEndian: bigEndian))
        let translations = Int(word(16, bigEndian: bigEndian))
        for (table, label) in [(originals, "original"), (translations, "translation")] {
            guard table <= bytes.count, count <= (bytes.count - table) / 8 else {
                throw fail("\(label) table of \(count) entries at offset \(table) runs past the end (\(bytes.count) bytes)")
            }
        }
        func string(table: Int, index: Int) throws -> ArraySlice<UInt8> {
            let length = Int(word(table + 8 * index, bigEndian: bigEndian))
            let offset = Int(word(table + 8 * index + 4, bigEndian: bigEndian))
            guard offset <= bytes.count, length < bytes.count - offset else {
                throw fail("string \(index) (offset \(offset), length \(length)) runs past the end")
            }
            return bytes[offset..<(offset + length)]
        }

        // The header first: it names the charset of all other strings.
        var charset = "UTF-8"
        var header = ""
        for i in 0..<count where try string(table: originals, index: i).isEmpty {
            let raw = try string(table: translations, index: i)
            header = String(decoding: raw, as: UTF8.self)  // the header itself is ASCII
            if let named = MOCatalog.charset(inHeader: header) { charset = named }
            break
        }
        if !TextDecoding.isUTF8(charset) {
            do { _ = try TextDecoding.decode([UInt8](), charset: charset) } catch {
                throw fail("\(error)")
            }
        }

        var entries: [Entry] = []
        entries.reserveCapacity(count)
        var undecodable = 0
        for i in 0..<count {
            let id = try string(table: originals, index: i)
            if id.isEmpty { continue }
            let str = try string(table: translations, index: i)
            let idParts = id.split(separator: 0, omittingEmptySubsequences: false)
            let strFirst = str.split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false)[0]
            do {
                let full = try TextDecoding.decode(idParts[0], charset: charset)
                let translation = try TextDecoding.decode(strFirst, charset: charset)
                var context: String? = nil
                var source = full
                if let sep = full.firstIndex(of: "\u{4}") {
                    context = String(full[..<sep])
                    source = String(full[full.index(after: sep)...])
                }
                entries.append(Entry(context: context, source: source, translation: translation,
                                     isPlural: idParts.count > 1))
            } catch {
                undecodable += 1
            }
        }
        self.charset = charset
        self.header = header
        self.entries = entries
        self.undecodable = undecodable
    }

    /// The `charset=` value of a catalog header's Content-Type line, if any
    /// (the placeholder `CHARSET` of an unfilled template counts as none).
    public static func charset(inHeader header: String) -> String? {
        for line in header.split(whereSeparator: { $0 == "\n" }) {
            let original = String(line)
            guard original.lowercased().hasPrefix("content-type:"),
                  let r = original.range(of: "charset=", options: .caseInsensitive) else { continue }
            let value = original[r.upperBound...].prefix { !$0.isWhitespace && $0 != ";" }
            if value.isEmpty || value.uppercased() == "CHARSET" { return nil }
            return String(value)
        }
        return nil
    }
}
