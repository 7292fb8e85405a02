import Foundation
import XCTest
import ThorData

final class CorpusTests: XCTestCase {
    static func small(seed: UInt64 = 7) -> SyntheticCorpus.Configuration {
        var c = SyntheticCorpus.Configuration()
        c.seed = seed; c.trainSize = 2_000; c.devSizePerDomain = 30; c.testSizePerDomain = 40
        return c
    }

    func testSameSeedSameCorpusDifferentSeedDifferent() throws {
        let a = try SyntheticCorpus(configuration: Self.small())
        let b = try SyntheticCorpus(configuration: Self.small())
        XCTAssertEqual(a.train, b.train)
        XCTAssertEqual(a.dev, b.dev)
        XCTAssertEqual(a.test, b.test)
        let c = try SyntheticCorpus(configuration: Self.small(seed: 8))
        XCTAssertNotEqual(a.train, c.train)
    }

    func testSplitSizesAndImbalance() throws {
        let c = try SyntheticCorpus(configuration: Self.small())
        XCTAssertEqual(c.train.count, 2_000)
        XCTAssertEqual(c.dev.count, 4 * 30)
        XCTAssertEqual(c.test.count, 4 * 40)
        let sizes = c.tasks.map { t in c.train.filter { $0.task == t }.count }
        XCTAssertEqual(sizes, [1_000, 500, 300, 200])
        for t in c.tasks { XCTAssertEqual(c.test.filter { $0.task == t }.count, 40) }
        // splits do not share sentences (practically: random 4–12 word sentences)
        let trainSources = Set(c.train.map(\.source))
        XCTAssertLessThan(c.test.filter { trainSources.contains($0.source) }.count, 3)
    }

    func testLengthsAndGrammar() throws {
        let c = try SyntheticCorpus(configuration: Self.small())
        for p in c.train.prefix(500) {
            let n = p.source.split(separator: " ").count - 1
            XCTAssertTrue((4...12).contains(n), p.source)
            XCTAssertEqual(p.target.split(separator: " ").count, n)
            XCTAssertTrue(p.target.hasSuffix("."))
            XCTAssertEqual(c.translate(p.source, domain: p.task), p.target)
        }
        // the noun-adjective reordering happens somewhere
        let reordered = c.train.prefix(200).contains { p in
            let words = p.source.split(separator: " ").dropLast().map(String.init)
            let literal = words.map { w in c.lexicon.first { $0.source == w }!.translations[c.tasks.firstIndex(of: p.task)!] }
            return literal.joined(separator: " ") + "." != p.target
        }
        XCTAssertTrue(reordered)
    }

    func testAmbiguousWordsDependOnDomain() throws {
        let c = try SyntheticCorpus(configuration: Self.small())
        let ambiguous = c.lexicon.filter(\.isAmbiguous)
        XCTAssertEqual(ambiguous.count, 12)
        for e in ambiguous { XCTAssertEqual(Set(e.translations).count, 4, "one translation per domain") }
        // an ambiguous word occurs in training data of every domain with its domain's translation
        let w = ambiguous[0]
        for (d, task) in c.tasks.enumerated() {
            let hit = c.train.first { $0.task == task && $0.source.split(separator: " ").contains(Substring(w.source)) }
            XCTAssertNotNil(hit, "\(w.source) in \(task)")
            if let hit { XCTAssertTrue(hit.target.contains(w.translations[d])) }
        }
        XCTAssertNotEqual(c.translate("\(w.source) .", domain: "it"), c.translate("\(w.source) .", domain: "law"))
    }

    func testMixedSentencesKeepMajorityLabel() throws {
        let c = try SyntheticCorpus(configuration: Self.small())
        var mixed = 0
        for (i, p) in c.train.enumerated() {
            var counts = [Int](repeating: 0, count: c.tasks.count)
            for w in p.source.split(separator: " ") {
                if let d = c.lexicon.first(where: { $0.source == w })?.domain { counts[d] += 1 }
            }
            let label = c.tasks.firstIndex(of: p.task)!
            if counts.enumerated().contains(where: { $0.offset != label && $0.element > 0 }) {
                mixed += 1
                XCTAssertGreaterThan(counts[label], counts.enumerated().filter { $0.offset != label }.map(\.element).max()!, "pair \(i)")
            }
        }
        XCTAssertGreaterThan(mixed, 10)
    }

    func testInvalidConfigurationIsRejected() {
        var c = Self.small(); c.domainShares = [1, 2]
        XCTAssertThrowsError(try SyntheticCorpus(configuration: c))
        c = Self.small(); c.minLength = 9; c.maxLength = 5
        XCTAssertThrowsError(try SyntheticCorpus(configuration: c))
    }

    // MARK: Corpus files

    func testCorpusFileRoundTrip() throws {
        let c = try SyntheticCorpus(configuration: Self.small())
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("thor-corpus-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("train.tsv").path
        let pairs = c.dev + [TranslationPair(task: "it", source: "Grüße 😀 \"q\"", target: "greetings")]
        try CorpusFile.write(pairs, to: path)
        XCTAssertEqual(try CorpusFile.read(path: path, tasks: c.tasks), pairs)
        XCTAssertThrowsError(try CorpusFile.write([TranslationPair(task: "it", source: "a\tb", target: "c")], to: path))
        XCTAssertEqual(try CorpusFile.read(path: path), pairs, "a failed write leaves the file as it was")
    }

    func testMalformedLinesNameFileAndLine() {
        func check(_ bytes: [UInt8], tasks: [String]? = nil, line: Int, _ reason: String, file: StaticString = #filePath, lineNo: UInt = #line) {
            XCTAssertThrowsError(try CorpusFile.parse(Data(bytes), path: "x.tsv", tasks: tasks), file: file, line: lineNo) { e in
                guard let e = e as? CorpusFileError else { return XCTFail("\(e)", file: file, line: lineNo) }
                XCTAssertEqual(e.path, "x.tsv", file: file, line: lineNo)
                XCTAssertEqual(e.line, line, file: file, line: lineNo)
                XCTAssertTrue(e.description.contains(reason), e.description, file: file, line: lineNo)
                XCTAssertTrue(e.description.hasPrefix("x.tsv:\(line):"), e.description, file: file, line: lineNo)
            }
        }
        check(Array("it\ta\tb\nit\ta\n".utf8), line: 2, "found 2")
        check(Array("it\ta\tb\tc\n".utf8), line: 1, "found 4")
        check(Array("it\ta\tb\nit\t\tb\n".utf8), line: 2, "source field is empty")
        check(Array("it\ta\tb\n\nit\ta\tb\n".utf8), line: 2, "found 1")
        check(Array("it\ta\tb\n".utf8) + [0x6C, 0x09, 0xC3, 0x28, 0x09, 0x62, 0x0A], line: 2, "UTF-8")
        check(Array("it\ta\tb\nlaw\tc\td\n".utf8), tasks: ["it"], line: 2, "unknown task 'law'")
        XCTAssertEqual(try CorpusFile.parse(Data("it\ta b\tc\r\nlaw\td\te".utf8)),
                       [TranslationPair(task: "it", source: "a b", target: "c"), TranslationPair(task: "law", source: "d", target: "e")])
        XCTAssertThrowsError(try CorpusFile.read(path: "/nonexistent/thor.tsv")) { e in
            XCTAssertTrue("\(e)".contains("/nonexistent/thor.tsv"))
        }
    }
}
