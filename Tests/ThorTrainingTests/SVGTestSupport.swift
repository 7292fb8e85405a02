import XCTest
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// Every element named `name` in the SVG document `svg` (which must parse as XML), in document order.
func elements(_ svg: String, named name: String) throws -> [XMLElement] {
    let doc = try XMLDocument(data: Data(svg.utf8), options: [])
    var found: [XMLElement] = []
    func walk(_ e: XMLElement) {
        if e.localName == name { found.append(e) }
        for case let c as XMLElement in e.children ?? [] { walk(c) }
    }
    walk(try XCTUnwrap(doc.rootElement()))
    return found
}

/// The value of `e`'s attribute `name`.
func attribute(_ e: XMLElement, _ name: String) -> String? { e.attributes?.first { $0.name == name }?.stringValue }
