import Foundation
import XCTest
import ThorData

/// The split rule (no English string in two splits, deterministic) and the pair filters.
final class CorpusSplitTests: XCTestCase {
    /// Pairs over three tasks where many English strings recur across tasks and in other letter cases.
    func samplePairs() -> [TranslationPair] {
        var pairs: [TranslationPair] = []
        for i in 0..<3000 {
            let english = i % 3 == 0 ? "Open the file number \(i % 700)" : "Close window \(i)"
            let cased = i % 5 == 0 ? english.uppercased() : english
            let task = ["de", "fr", "ru"][i % 3]
            pairs.append(TranslationPair(task: task, source: "\(task) \(i % 1100)", target: cased))
            if i % 7 == 0 { pairs.append(TranslationPair(task: task, source: "\(task) \(i % 1100)", target: cased)) }  // exact duplicate
        }
        return pairs
    }

    func testNoEnglishStringCrossesSplits() {
        let sizes = ["de": CorpusSplit.Sizes(dev: 50, test: 100), "fr": CorpusSplit.Sizes(dev: 20, test: 40),
                     "ru": CorpusSplit.Sizes(dev: 100, test: 200)]
        let r = CorpusSplit.split(samplePairs(), tasks: ["de", "fr", "ru"], sizes: sizes)
        var splitOf: [String: CorpusSplit.Name] = [:]
        for name in CorpusSplit.Name.allCases {
            for p in r[name] {
                let key = p.target.lowercased()
                if let other = splitOf[key] { XCTAssertEqual(other, name, "\(key) in \(other) and \(name)") }
                splitOf[key] = name
            }
        }
        for (task, s) in sizes {
            XCTAssertLessThanOrEqual(r.test.filter { $0.task == task }.count, s.test)
            XCTAssertLessThanOrEqual(r.dev.filter { $0.task == task }.count, s.dev)
            XCTAssertGreaterThan(r.test.filter { $0.task == task }.count, s.test / 2, task)
            XCTAssertGreaterThan(r.dev.filter { $0.task == task }.count, s.dev / 3, task)
        }
        // every unique pair is in exactly one split or counted as overflow; duplicates counted
        let unique = Set(samplePairs())
        XCTAssertEqual(r.duplicates.values.reduce(0, +), samplePairs().count - unique.count)
        XCTAssertEqual(r.train.count + r.dev.count + r.test.count + r.overflow.values.reduce(0, +), unique.count)
        XCTAssertEqual(Set(r.train + r.dev + r.test).count, r.train.count + r.dev.count + r.test.count)
        // ordered by task
        XCTAssertEqual(r.train.map(\.task), r.train.map(\.task).sorted { ["de", "fr", "ru"].firstIndex(of: $0)! < ["de", "fr", "ru"].firstIndex(of: $1)! })
    }

    func testSplitIsDeterministicAndIndependentOfInputOrder() {
        let sizes = ["de": CorpusSplit.Sizes(dev: 30, test: 60), "fr": CorpusSplit.Sizes(dev: 30, test: 60),
                     "ru": CorpusSplit.Sizes(dev: 30, test: 60)]
        let pairs = samplePairs()
        let a = CorpusSplit.split(pairs, tasks: ["de", "fr", "ru"], sizes: sizes)
        let b = CorpusSplit.split(pairs, tasks: ["de", "fr", "ru"], sizes: sizes)
        var rng = SystemRandomNumberGenerator()
        let c = CorpusSplit.split(pairs.shuffled(using: &rng), tasks: ["de", "fr", "ru"], sizes: sizes)
        for name in CorpusSplit.Name.allCases {
            XCTAssertEqual(a[name], b[name])
            XCTAssertEqual(a[name], c[name])
        }
        // the position of a string is a fixed function of its lower-cased text
        XCTAssertEqual(CorpusSplit.position(ofEnglish: "Open File"), CorpusSplit.position(ofEnglish: "open file"))
        XCTAssertEqual(CorpusSplit.position(ofEnglish: "abc"), 0xba78_16bf_8f01_cfea)  // first 8 bytes of SHA-256("abc")
    }

    func testFilters() {
        let f = PairFilter()
        XCTAssertEqual(f.check(source: "", english: "Open file"), .empty)
        XCTAssertEqual(f.check(source: "Open file", english: "Open file"), .identical)
        XCTAssertEqual(f.check(source: "%s Dateien", english: "%s files"), .shortEnglish)
        XCTAssertEqual(f.check(source: "{0} öffnen", english: "open {0}"), .shortEnglish)
        XCTAssertEqual(f.check(source: "Datei öffnen", english: "Open file"), nil)
        XCTAssertEqual(f.check(source: "Gr\u{FFFD}\u{FFFD}e", english: "Some size"), .replacementCharacter)
        XCTAssertEqual(f.check(source: String(repeating: "a ", count: 81), english: "many words"), .long)
        XCTAssertEqual(PairFilter.removingMnemonics("_Datei öffnen, Save &As, Tom & Jerry, file_name, &&, Datei(_F)"),
                       "Datei öffnen, Save As, Tom & Jerry, file_name, &, Datei")
        XCTAssertEqual(PairFilter.removingFormatSpecifiers("%1$s of %-10.3lf %% 100% sure ${HOME} {name}").split(separator: " "),
                       ["of", "100%", "sure"])
        // multi-line help: split when both sides have the same number of lines, else joined
        let lines = f.lines(source: "Zeile eins\nZeile  zwei\n", english: "Line one\nline two")
        XCTAssertEqual(lines.map(\.source), ["Zeile eins", "Zeile zwei"])
        XCTAssertEqual(lines.map(\.english), ["Line one", "line two"])
        let joined = f.lines(source: "eins\tzwei", english: "one\ntwo\nthree")
        XCTAssertEqual(joined.map(\.source), ["eins zwei"])
        XCTAssertEqual(joined.map(\.english), ["one two three"])
    }

    func testCatalogLocalesMapToTasks() {
        let langs = CorpusSources.multilingualLanguages
        XCTAssertEqual(CorpusSources.task(forLocale: "pt_BR", languages: langs), "pt")
        XCTAssertEqual(CorpusSources.task(forLocale: "zh-CN", languages: langs), "zh_CN")
        XCTAssertNil(CorpusSources.task(forLocale: "zh_TW", languages: langs))
        XCTAssertEqual(CorpusSources.task(forLocale: "ru.cp1251", languages: langs), "ru")
        XCTAssertNil(CorpusSources.task(forLocale: "sr@latin", languages: langs))
        XCTAssertEqual(CorpusSources.task(forLocale: "de_CH", languages: ["de"]), "de")
    }
}
