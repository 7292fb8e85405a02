import Foundation
import XCTest
import ThorData

/// Writes `.mo` bytes by hand: magic, revision, count, two (length, offset) tables, no hash table, strings.
func makeMO(_ entries: [([UInt8], [UInt8])], bigEndian: Bool = false, magic: UInt32 = 0x9504_12de) -> Data {
    var out: [UInt8] = []
    func word(_ v: UInt32) {
        let b = [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)]
        out += bigEndian ? b : b.reversed()
    }
    let n = UInt32(entries.count)
    let originals: UInt32 = 28, translations = 28 + 8 * n
    var stringsAt = Int(28 + 16 * n)
    var ids: [(UInt32, UInt32)] = [], strs: [(UInt32, UInt32)] = []
    var blob: [UInt8] = []
    for (id, _) in entries { ids.append((UInt32(id.count), UInt32(stringsAt + blob.count))); blob += id + [0] }
    for (_, str) in entries { strs.append((UInt32(str.count), UInt32(stringsAt + blob.count))); blob += str + [0] }
    word(magic); word(0); word(n); word(originals); word(translations); word(0); word(stringsAt == 0 ? 0 : UInt32(stringsAt))
    for (l, o) in ids { word(l); word(o) }
    for (l, o) in strs { word(l); word(o) }
    stringsAt = out.count
    out += blob
    return Data(out)
}

func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

final class MOCatalogTests: XCTestCase {
    func header(_ charset: String) -> ([UInt8], [UInt8]) {
        ([], utf8("Project-Id-Version: test\nMIME-Version: 1.0\nContent-Type: text/plain; charset=\(charset)\nPlural-Forms: nplurals=3;\n"))
    }

    func testCP1251CatalogWithContextAndPluralLittleEndian() throws {
        // "Файл" and "Файлы" / "Файлов" in Windows-1251, "Открыть" with a msgctxt
        let file: [UInt8] = [0xD4, 0xE0, 0xE9, 0xEB]
        let files: [UInt8] = [0xD4, 0xE0, 0xE9, 0xEB, 0xFB]
        let filesMany: [UInt8] = [0xD4, 0xE0, 0xE9, 0xEB, 0xEE, 0xE2]
        let open: [UInt8] = [0xCE, 0xF2, 0xEA, 0xF0, 0xFB, 0xF2, 0xFC]
        let data = makeMO([
            header("CP1251"),
            (utf8("%d file") + [0] + utf8("%d files"), file + [0] + files + [0] + filesMany),
            (utf8("menu") + [4] + utf8("Open"), open),
            (utf8("Quit"), [0xC2, 0xFB, 0xF5, 0xEE, 0xE4]),
        ])
        let mo = try MOCatalog(data: data, name: "ru.mo")
        XCTAssertEqual(mo.charset, "CP1251")
        XCTAssertEqual(mo.undecodable, 0)
        XCTAssertEqual(mo.entries, [
            MOCatalog.Entry(context: nil, source: "%d file", translation: "Файл", isPlural: true),
            MOCatalog.Entry(context: "menu", source: "Open", translation: "Открыть", isPlural: false),
            MOCatalog.Entry(context: nil, source: "Quit", translation: "Выход", isPlural: false),
        ])
    }

    func testCP936CatalogBigEndian() throws {
        // "文件" and "打开" in GBK / CP936, as vim's zh_CN.cp936 catalog
        let data = makeMO([header("cp936"), (utf8("File"), [0xCE, 0xC4, 0xBC, 0xFE]), (utf8("Open"), [0xB4, 0xF2, 0xBF, 0xAA])],
                          bigEndian: true)
        let mo = try MOCatalog(data: data)
        XCTAssertEqual(mo.entries.map(\.translation), ["文件", "打开"])
        XCTAssertEqual(mo.entries.map(\.source), ["File", "Open"])
    }

    func testISO8859AndUTF8AndNoHeader() throws {
        let latin2 = makeMO([header("ISO-8859-2"), (utf8("Close"), [0x5A, 0x61, 0x6D, 0x6B, 0x6E, 0xB1, 0xE6])])  // "Zamknąć"
        XCTAssertEqual(try MOCatalog(data: latin2).entries.first?.translation, "Zamknąć")
        let plain = makeMO([(utf8("Save"), utf8("Speichern")), (utf8("Size"), utf8("Größe"))])
        let mo = try MOCatalog(data: plain)
        XCTAssertEqual(mo.charset, "UTF-8")
        XCTAssertEqual(mo.entries.map(\.translation), ["Speichern", "Größe"])
        // a UTF-8 catalog with one invalid string: that entry is dropped and counted
        let broken = makeMO([header("UTF-8"), (utf8("A"), [0xFF, 0x41]), (utf8("B"), utf8("Bé"))])
        let b = try MOCatalog(data: broken)
        XCTAssertEqual(b.entries.map(\.source), ["B"])
        XCTAssertEqual(b.undecodable, 1)
    }

    func testMalformedFilesAreRejectedWithTheReason() {
        XCTAssertThrowsError(try MOCatalog(data: Data([1, 2, 3]), name: "x.mo")) { e in
            XCTAssertTrue("\(e)".contains("x.mo: too short"), "\(e)")
        }
        var bad = [UInt8](makeMO([(utf8("a"), utf8("b"))]))
        bad[0] = 0
        XCTAssertThrowsError(try MOCatalog(data: Data(bad))) { e in XCTAssertTrue("\(e)".contains("not a .mo file"), "\(e)") }
        // string offset past the end
        var past = [UInt8](makeMO([(utf8("a"), utf8("b"))]))
        past[32] = 0xFF; past[33] = 0xFF
        XCTAssertThrowsError(try MOCatalog(data: Data(past))) { e in XCTAssertTrue("\(e)".contains("runs past the end"), "\(e)") }
        // more entries claimed than the tables hold
        var count = [UInt8](makeMO([(utf8("a"), utf8("b"))]))
        count[8] = 0xFF; count[9] = 0xFF
        XCTAssertThrowsError(try MOCatalog(data: Data(count))) { e in XCTAssertTrue("\(e)".contains("table"), "\(e)") }
        // a charset iconv does not know
        XCTAssertThrowsError(try MOCatalog(data: makeMO([header("NO-SUCH-CHARSET-42"), (utf8("a"), utf8("b"))]))) { e in
            XCTAssertTrue("\(e)".contains("NO-SUCH-CHARSET-42"), "\(e)")
        }
    }

    func testCharsetFromHeader() {
        XCTAssertEqual(MOCatalog.charset(inHeader: "Language: de\ncontent-type: text/plain; Charset=iso-8859-1\n"), "iso-8859-1")
        XCTAssertNil(MOCatalog.charset(inHeader: "Content-Type: text/plain; charset=CHARSET\n"))
        XCTAssertNil(MOCatalog.charset(inHeader: "Project-Id-Version: x\n"))
    }
}
