import Foundation
import XCTest
import ThorData

final class BLEUTests: XCTestCase {
    func testCorpusScoresMatchSacreBLEU() throws {
        for c in SacreBLEUReference.cases {
            let s: BLEUScore
            do { s = try SacreBLEU.corpusScore(hypotheses: c.hypotheses, references: c.references) } catch {
                XCTFail("\(c.name): \(error)"); continue  // the other cases still run
            }
            XCTAssertEqual(s.counts, c.counts, c.name)
            XCTAssertEqual(s.totals, c.totals, c.name)
            XCTAssertEqual(s.hypothesisLength, c.hypothesisLength, c.name)
            XCTAssertEqual(s.referenceLength, c.referenceLength, c.name)
            // same libm, same operation order: the same double, not just close
            XCTAssertEqual(s.score, c.score, c.name)
            XCTAssertEqual(s.description, c.line, c.name)
        }
    }

    func testTokenizer13aMatchesSacreBLEU() {
        for (input, expected) in SacreBLEUReference.tokenized {
            XCTAssertEqual(Array(Tokenizer13a.tokenize(stripTrailing(input)).unicodeScalars),
                           Array(expected.unicodeScalars), "tokenizing \(input.debugDescription)")
        }
    }

    func testSignature() {
        XCTAssertEqual(SacreBLEU.signature, SacreBLEUReference.signature)
    }

    func testStatisticsAddUpToCorpusScore() throws {
        let c = SacreBLEUReference.cases.first { $0.name == "multipleLines" }!
        var stats = BLEUStatistics()
        for (h, r) in zip(c.hypotheses, c.references) { stats.add(SacreBLEU.statistics(hypothesis: h, reference: r)) }
        XCTAssertEqual(SacreBLEU.score(stats).score, c.score)
    }

    func testNoUnicodeNormalization() throws {
        // precomposed é and e + combining acute are different tokens for sacreBLEU
        let s = try SacreBLEU.corpusScore(hypotheses: ["caf\u{E9} x y z"], references: ["cafe\u{301} x y z"])
        XCTAssertEqual(s.counts, [3, 2, 1, 0])
    }

    func testLineCountMismatchIsAnError() {
        XCTAssertThrowsError(try SacreBLEU.corpusScore(hypotheses: ["a"], references: ["a", "b"])) { e in
            XCTAssertEqual(e as? SacreBLEU.Failure, .lineCountMismatch(hypotheses: 1, references: 2))
        }
    }

    func testReadLinesLikeSacreBLEU() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("thor-bleu-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = dir.appendingPathComponent("a.txt").path
        try Data("one \r\ntwo\u{A0}\n\nthree".utf8).write(to: URL(fileURLWithPath: p))
        XCTAssertEqual(try SacreBLEU.readLines(path: p), ["one", "two", "", "three"])
        try Data("x\n".utf8).write(to: URL(fileURLWithPath: p))
        XCTAssertEqual(try SacreBLEU.readLines(path: p), ["x"])
        try Data([0x61, 0x0A, 0xFF, 0x0A]).write(to: URL(fileURLWithPath: p))
        XCTAssertThrowsError(try SacreBLEU.readLines(path: p)) { e in
            XCTAssertEqual(e as? SacreBLEU.Failure, .invalidUTF8(path: p, line: 2))
        }
    }

    func testJSONOutputLikeSacreBLEUCommandLine() throws {
        let c = SacreBLEUReference.cases.first { $0.name == "simple" }!
        let s = try SacreBLEU.corpusScore(hypotheses: c.hypotheses, references: c.references)
        XCTAssertEqual(s.json(), """
        {
         "name": "BLEU",
         "score": 42.1,
         "signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
         "verbose_score": "90.0/62.5/33.3/25.0 (BP = 0.905 ratio = 0.909 hyp_len = 10 ref_len = 11)",
         "nrefs": "1",
         "case": "mixed",
         "eff": "no",
         "tok": "13a",
         "smooth": "exp",
         "version": "2.6.0"
        }
        """)
        XCTAssertEqual(s.line(signature: SacreBLEU.signature, width: 1),
                       "BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0 = 42.1 90.0/62.5/33.3/25.0 (BP = 0.905 ratio = 0.909 hyp_len = 10 ref_len = 11)")
    }

    /// Python's rstrip for the few whitespace characters the fixtures use.
    private func stripTrailing(_ s: String) -> String {
        var v = Array(s.unicodeScalars)
        let ws: Set<UInt32> = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x3000]
        while let l = v.last, ws.contains(l.value) { v.removeLast() }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: v)
        return String(out)
    }
}
