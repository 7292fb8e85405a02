import Foundation
import XCTest
import ThorData

/// Parsers of the corpus sources on small inputs made here: SQLite Bible, Quran JSON,
/// Ding dictionary lines, the umlaut repair, SHA-256.
final class CorpusSourceTests: XCTestCase {
    func temporaryPath(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("thor-data-tests-\(getpid())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir.appendingPathComponent(name).path
    }

    func testBibleFromATinySQLiteFile() throws {
        let path = temporaryPath("bible.db")
        let db = try SQLiteDatabase(path: path, create: true)
        try db.execute("""
            CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, cNumber INTEGER NOT NULL,
                                vNumber INTEGER NOT NULL, vText TEXT NOT NULL, PRIMARY KEY (bbName, bNumber, cNumber, vNumber));
            INSERT INTO bible VALUES (1, 's', 1, 1, 2, 'Und die Erde war wüst und leer.');
            INSERT INTO bible VALUES (2, 's', 1, 1, 1, 'Im Anfang schuf Gott den Himmel und die Erde.');
            INSERT INTO bible VALUES (3, 's', 2, 1, 1, 'Dies ist nur deutsch.');
            INSERT INTO bible VALUES (4, '4', 1, 1, 1, 'In the beginning God created the heavens and the earth.');
            INSERT INTO bible VALUES (5, '4', 1, 1, 2, 'The earth was formless and  empty [of life], God`s.');
            INSERT INTO bible VALUES (6, '4', 3, 1, 1, 'Only English.');
            """)
        let reader = try SQLiteDatabase(path: path)
        let verses = try SonOfManBible.parallel(database: reader, source: "s", english: "4")
        XCTAssertEqual(verses, [
            ParallelVerse(id: "bible.1.1.1", source: "Im Anfang schuf Gott den Himmel und die Erde.",
                          english: "In the beginning God created the heavens and the earth."),
            ParallelVerse(id: "bible.1.1.2", source: "Und die Erde war wüst und leer.",
                          english: "The earth was formless and empty of life, God's."),
        ])
        var rows: [[SQLiteDatabase.Value]] = []
        try reader.query("SELECT bNumber, vText FROM bible WHERE bbName = ? AND vNumber = ?", [.text("4"), .integer(2)]) { rows.append($0) }
        XCTAssertEqual(rows, [[.integer(1), .text("The earth was formless and  empty [of life], God`s.")]])
        XCTAssertThrowsError(try SonOfManBible.verses(database: reader, edition: "x")) { e in
            XCTAssertTrue("\(e)".contains("edition 'x' has no verses"), "\(e)")
        }
        XCTAssertThrowsError(try reader.query("SELECT verse FROM nowhere") { _ in }) { e in
            XCTAssertTrue("\(e)".contains("no such table"), "\(e)")
        }
        XCTAssertThrowsError(try SQLiteDatabase(path: temporaryPath("missing.db"))) { e in
            XCTAssertTrue("\(e)".contains("no such file"), "\(e)")
        }
    }

    func testQuranJSON() throws {
        let json = #"[{"English": "In the name of Allah .", "German": "Im Namen ALLAHs  (rezitiere ich) ."},"#
            + #" {"English": "Praise be to Allah", "Dutch": "Lof zij God"}]"#
        let verses = try QurangoQuran.parallel(jsonData: Data(json.utf8), language: "German")
        XCTAssertEqual(verses, [ParallelVerse(id: "quran.1", source: "Im Namen ALLAHs (rezitiere ich).", english: "In the name of Allah.")])
        XCTAssertThrowsError(try QurangoQuran.parallel(jsonData: Data("{".utf8), language: "German")) { e in
            XCTAssertTrue("\(e)".contains("not valid JSON"), "\(e)")
        }
        XCTAssertThrowsError(try QurangoQuran.parallel(jsonData: Data(json.utf8), language: "Klingon")) { e in
            XCTAssertTrue("\(e)".contains("no verse has both Klingon and English"), "\(e)")
        }
    }

    func testDingExampleSentences() {
        let text = """
            # Version :: devel
            Abendessen {n} | Das Abendessen hat mir geschmeckt. | Wollen wir essen? :: supper | I enjoyed my supper. | Shall we eat?
            Noch ist nicht aller Tage Abend.; Man soll den Tag nicht vor dem Abend loben. :: It's not over until it's over. [Am.]; It ain't over.
            Wenn du weißt, was ich meine. :: If you know what I mean. /IYKWIM/
            eine Abkürzung nehmen {v} | Hier geht es. :: to cut across | You can cut across here.
            zwei | Teile hier. :: only one side
            """
        let s = DingDictionary.exampleSentences(in: text)
        XCTAssertEqual(s.map(\.german), ["Das Abendessen hat mir geschmeckt.", "Wollen wir essen?", "Noch ist nicht aller Tage Abend.",
                                         "Wenn du weißt, was ich meine.", "Hier geht es."])
        XCTAssertEqual(s.map(\.english), ["I enjoyed my supper.", "Shall we eat?", "It's not over until it's over.",
                                          "If you know what I mean.", "You can cut across here."])
        XCTAssertEqual(s.map(\.line), [2, 2, 3, 4, 5])
    }

    func testUmlautRepairFromAVocabulary() {
        var repair = UmlautRepair()
        repair.addWordList("für\nüber\ngegenüber\nSchöpfung\ngefällig\nBär\nBör\nHöhle\n")
        repair.addText("Der Bär und der Bär. Daß es so ist, weiß er.")
        // known words, a capitalized sentence start, old spelling from the text, two holes in one word
        XCTAssertEqual(repair.repair("F\u{FFFD}r die Sch\u{FFFD}pfung, da\u{FFFD} er es wei\u{FFFD}: gegen\u{FFFD}ber"),
                       "Für die Schöpfung, daß er es weiß: gegenüber")
        // the more frequent of two known candidates (Bär: 3, Bör: 1)
        XCTAssertEqual(repair.repairWord("B\u{FFFD}r"), "Bär")
        // a compound whose known ending covers the hole
        XCTAssertEqual(repair.repairWord("gottgef\u{FFFD}llig"), "gottgefällig")
        // a lower-case use of a capitalized word
        XCTAssertEqual(repair.repairWord("h\u{FFFD}hle"), "höhle")
        // nothing known: unchanged, so the caller can drop the text
        XCTAssertNil(repair.repairWord("Qu\u{FFFD}x"))
        XCTAssertEqual(repair.repair("ein Qu\u{FFFD}x f\u{FFFD}r"), "ein Qu\u{FFFD}x für")
        XCTAssertEqual(repair.repair("unchanged text"), "unchanged text")
    }

}
