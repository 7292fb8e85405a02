import XCTest
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import ThorTraining

/// The report's hand-written SVG charts are well-formed XML whatever the series names and values.
final class SVGPlotTests: XCTestCase {
    func testNamesAreEscapedAndMissingValuesSkipped() throws {
        let series = [SVGPlot.Series(name: "a<b & \"c\"", values: [1.5, nil, 3]),
                      SVGPlot.Series(name: "dense", values: [nil, nil, nil])]
        let bars = SVGPlot.groupedBars(title: "BLEU <test>", yLabel: "BLEU", categories: ["x", "y&z", "w"], series: series)
        let groups = try elements(bars, named: "g").filter { attribute($0, "class") == "series" }
        XCTAssertEqual(groups.map { attribute($0, "data-series") }, ["a<b & \"c\"", "dense"])
        // Bars only where there is a value (the legend swatch is a rect without a child <title>).
        let drawn = groups.map { ($0.children ?? []).compactMap { $0 as? XMLElement }.filter { $0.localName == "rect" && $0.childCount > 0 }.count }
        XCTAssertEqual(drawn, [2, 0])

        let lines = SVGPlot.lines(title: "experts", yLabel: "experts per token", categories: ["enc 1", "dec 1"],
                                  series: [SVGPlot.Series(name: "top-p", values: [1.2, 1.1]), SVGPlot.Series(name: "dense", values: [nil, nil])])
        let lg = try elements(lines, named: "g").filter { attribute($0, "class") == "series" }
        XCTAssertEqual(lg.count, 2)
        XCTAssertEqual(try elements(lines, named: "polyline").count, 1)
        XCTAssertEqual(try elements(lines, named: "circle").count, 2)
        // Higher values sit higher (smaller y).
        let ys = try elements(lines, named: "circle").compactMap { attribute($0, "cy").flatMap(Double.init) }
        XCTAssertLessThan(ys[0], ys[1])
    }
}
