import Foundation
import XCTest
import ThorData
import ThorTensor

final class BPETests: XCTestCase {
    static let sampleTexts: [String] = {
        let c = try! SyntheticCorpus(configuration: {
            var k = SyntheticCorpus.Configuration(); k.trainSize = 400; k.devSizePerDomain = 0; k.testSizePerDomain = 0; return k
        }())
        return c.train.flatMap { [$0.source, $0.target] }
    }()

    func testSpecialTokenIDsAreFixed() throws {
        let t = try BPETokenizer(tags: ["<2de>", "<2fr>"])
        XCTAssertEqual(SpecialTokens.pad, 0)
        XCTAssertEqual(SpecialTokens.bos, 1)
        XCTAssertEqual(SpecialTokens.eos, 2)
        XCTAssertEqual(SpecialTokens.cls, 3)
        XCTAssertEqual(t.tagID("<2de>"), 4)
        XCTAssertEqual(t.tagID("<2fr>"), 5)
        XCTAssertEqual(t.byteOffset, 6)
        XCTAssertEqual(t.vocabularySize, 4 + 2 + 256)
        XCTAssertEqual(t.tokenString(2), "</s>")
        XCTAssertEqual(t.tokenString(3), "[CLS]")
        XCTAssertEqual(t.encode("A"), [6 + 65])
        XCTAssertThrowsError(try BPETokenizer(tags: ["<2de>", "<2de>"]))
        XCTAssertThrowsError(try BPETokenizer(tags: ["has space"]))
    }

    func testLearningReachesTargetSizeAndCompresses() throws {
        let t = try BPETokenizer.learn(from: Self.sampleTexts, vocabularySize: 600)
        XCTAssertEqual(t.vocabularySize, 600)
        let text = Self.sampleTexts[0]
        let ids = t.encode(text)
        XCTAssertLessThan(ids.count, text.utf8.count / 2, "merges should compress the training text")
        XCTAssertEqual(t.decode(ids), text)
        // special tokens are never produced from text
        XCTAssertFalse(ids.contains { $0 < t.byteOffset })
    }

    func testLearningIsDeterministic() throws {
        let a = try BPETokenizer.learn(from: Self.sampleTexts, vocabularySize: 500, tags: ["<2x>"])
        let b = try BPETokenizer.learn(from: Self.sampleTexts, vocabularySize: 500, tags: ["<2x>"])
        XCTAssertEqual(a.serialized(), b.serialized())
    }

    func testMergesMatchNaiveRecount() throws {
        // Incremental pair counting must pick the same merges as a from-scratch recount.
        let texts = Array(Self.sampleTexts.prefix(60))
        let t = try BPETokenizer.learn(from: texts, vocabularySize: 260 + 4 + 40)
        var words: [[Int32]: Int] = [:]
        for s in texts { for p in BPETokenizer.pieces(Array(s.utf8)) { words[p.map { 4 + Int32($0) }, default: 0] += 1 } }
        var next: Int32 = 4 + 256
        for (l, r) in t.merges {
            var counts: [[Int32]: Int] = [:]
            for (w, f) in words where w.count > 1 { for j in 0..<(w.count - 1) { counts[[w[j], w[j + 1]], default: 0] += f } }
            let best = counts.max { a, b in a.value != b.value ? a.value < b.value : (a.key[0], a.key[1]) > (b.key[0], b.key[1]) }!
            XCTAssertEqual(best.key, [l, r])
            var merged: [[Int32]: Int] = [:]
            for (w, f) in words {
                var o: [Int32] = []; var j = 0
                while j < w.count { if j + 1 < w.count && w[j] == l && w[j + 1] == r { o.append(next); j += 2 } else { o.append(w[j]); j += 1 } }
                merged[o, default: 0] += f
            }
            words = merged
            next += 1
        }
    }

    func testRoundTripArbitraryUnicode() throws {
        let t = try BPETokenizer.learn(from: Self.sampleTexts + ["naïve café 東京 😀 👩‍👩‍👧"], vocabularySize: 700)
        var rng = RandomGenerator(seed: 42)
        let ranges: [ClosedRange<UInt32>] = [0x00...0x7F, 0x80...0x24F, 0x300...0x36F, 0x4E00...0x4E80,
                                             0x1F300...0x1F64F, 0x200B...0x200F, 0xE000...0xE010, 0x10FFF0...0x10FFFF]
        for _ in 0..<300 {
            var s = String.UnicodeScalarView()
            for _ in 0..<rng.nextInt(below: 40) {
                let r = ranges[rng.nextInt(below: ranges.count)]
                let v = r.lowerBound + UInt32(rng.nextInt(below: Int(r.upperBound - r.lowerBound + 1)))
                if let u = Unicode.Scalar(v) { s.append(u) }
            }
            let text = String(s)
            let ids = t.encode(text)
            XCTAssertEqual(t.decodeBytes(ids), Array(text.utf8))
            XCTAssertEqual(t.decode(ids), text)
            XCTAssertEqual(t.encode([text, text]), [ids, ids], "batched encoding equals single encoding")
        }
        for text in ["", " ", "  two  spaces  ", "\t\n\r\0", "e\u{301}\u{302}", "👩‍👩‍👧 family", "日本語のテキスト。", "a\u{0}b"] {
            XCTAssertEqual(t.decode(t.encode(text)), text, text.debugDescription)
        }
    }

    func testPiecesConcatenateToInput() {
        let s = Array("Hello,  world 123abc\t\n x".utf8)
        let p = BPETokenizer.pieces(s)
        XCTAssertEqual(p.flatMap { $0 }, s)
        XCTAssertEqual(p.map { String(decoding: $0, as: UTF8.self) }, ["Hello", ",", " ", " world", " 123", "abc", "\t\n", " x"])
    }

    func testSaveLoadRoundTripAndErrors() throws {
        let t = try BPETokenizer.learn(from: Self.sampleTexts, vocabularySize: 400, tags: ["<2de>", "<2en>"])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("thor-bpe-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("bpe.txt").path
        try t.save(to: path)
        let u = try BPETokenizer.load(from: path)
        XCTAssertEqual(u, t)
        XCTAssertEqual(u.encode(Self.sampleTexts[3]), t.encode(Self.sampleTexts[3]))
        XCTAssertThrowsError(try BPETokenizer.parse("thor-bpe 2\ntags\nmerges 0\n"))
        XCTAssertThrowsError(try BPETokenizer.parse("thor-bpe 1\ntags\nmerges 2\n10 11\n")) { e in
            XCTAssertTrue("\(e)".contains("announces 2 merges"), "\(e)")
        }
        XCTAssertThrowsError(try BPETokenizer.parse("thor-bpe 1\ntags\nmerges 1\n10 9999\n")) { e in
            XCTAssertTrue("\(e)".contains("merge 0"), "\(e)")
        }
        XCTAssertThrowsError(try BPETokenizer.parse("thor-bpe 1\ntags\nmerges 1\n10 x\n")) { e in
            XCTAssertTrue("\(e)".contains(":4:"), "\(e)")
        }
        XCTAssertThrowsError(try BPETokenizer.learn(from: ["abc"], vocabularySize: 100))
    }
}
