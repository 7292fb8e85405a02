import Foundation

/// What a corpus build produced: pairs per task and split, what was dropped and why,
/// the package files used, and a SHA-256 checksum of each output file. Written as
/// `stats.json` and `stats.md`; holds no time or path, so the same packages give the
/// same statistics files too.
public struct BuildStatistics: Codable, Sendable {
    public struct FileSummary: Codable, Sendable, Equatable {
        public var pairs: Int
        public var bytes: Int
        public var sha256: String
    }

    public var kind: String
    public var tasks: [String] = []
    /// split → task → pairs.
    public var pairs: [String: [String: Int]] = [:]
    /// split (`train`, `dev`, `test`) → file summary.
    public var files: [String: FileSummary] = [:]
    /// task → reason → pairs dropped by the filters.
    public var rejected: [String: [String: Int]] = [:]
    /// task → exact duplicates dropped.
    public var duplicates: [String: Int] = [:]
    /// task → held-out pairs dropped because the task's dev/test set was full.
    public var overflow: [String: Int] = [:]
    /// Catalog charset → number of catalogs.
    public var charsets: [String: Int] = [:]
    /// Catalog entries dropped because they were invalid in their charset.
    public var undecodable = 0
    /// `.deb` files and wheels used, in use order.
    public var sources: [String] = []
    public var notes: [String] = []

    public init(kind: String) { self.kind = kind }

    /// Writes `stats.json` and `stats.md` into `directory`.
    public func write(to directory: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(self).write(to: directory.appendingPathComponent("stats.json"), options: .atomic)
        try Data(markdown.utf8).write(to: directory.appendingPathComponent("stats.md"), options: .atomic)
    }

    /// The statistics as a Markdown report.
    public var markdown: String {
        let splits = CorpusSplit.Name.allCases.map(\.rawValue)
        var s = "# Corpus build: \(kind)\n\n"
        s += "| task | " + splits.joined(separator: " | ") + " | duplicates | filtered | overflow |\n"
        s += "|---|" + String(repeating: "---:|", count: splits.count + 3) + "\n"
        for t in tasks {
            let filtered = rejected[t]?.values.reduce(0, +) ?? 0
            s += "| \(t) | " + splits.map { String(pairs[$0]?[t] ?? 0) }.joined(separator: " | ")
                + " | \(duplicates[t] ?? 0) | \(filtered) | \(overflow[t] ?? 0) |\n"
        }
        s += "| **all** | " + splits.map { String(files[$0]?.pairs ?? 0) }.joined(separator: " | ")
            + " | \(duplicates.values.reduce(0, +)) | \(rejected.values.flatMap(\.values).reduce(0, +)) | \(overflow.values.reduce(0, +)) |\n\n"
        s += "## Files\n\n| file | pairs | bytes | SHA-256 |\n|---|---:|---:|---|\n"
        for name in splits {
            if let f = files[name] { s += "| \(name).tsv | \(f.pairs) | \(f.bytes) | `\(f.sha256)` |\n" }
        }
        s += "\n## Filtered, by reason\n\n| task | reason | pairs |\n|---|---|---:|\n"
        for t in tasks {
            for (reason, n) in (rejected[t] ?? [:]).sorted(by: { $0.key < $1.key }) { s += "| \(t) | \(reason) | \(n) |\n" }
        }
        if !charsets.isEmpty {
            s += "\n## Catalog charsets\n\n"
            s += charsets.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
            s += "; entries invalid in their charset: \(undecodable)\n"
        }
        if !notes.isEmpty { s += "\n## Notes\n\n" + notes.map { "- \($0)\n" }.joined() }
        s += "\n## Sources\n\n" + sources.map { "- `\($0)`\n" }.joined()
        return s
    }
}
