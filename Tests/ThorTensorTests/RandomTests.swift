import XCTest
import ThorTensor

final class RandomTests: XCTestCase {
    func testRestoringStateReproducesTheSequence() {
        var g = RandomGenerator(seed: 42)
        _ = g.next()
        let saved = g.state
        let a = (0..<5).map { _ in g.nextFloat() }
        var h = RandomGenerator(seed: 0)
        h.state = saved
        XCTAssertEqual(a, (0..<5).map { _ in h.nextFloat() })
    }

    func testStreamsDiffer() {
        var a = RandomGenerator(seed: 7, stream: [1, 2])
        var b = RandomGenerator(seed: 7, stream: [2, 1])
        XCTAssertNotEqual(a.next(), b.next())
    }

    func testUniformStaysInRange() {
        var g = RandomGenerator(seed: 3)
        for _ in 0..<10_000 {
            let x = g.nextFloat()
            XCTAssertTrue(x >= 0 && x < 1)
        }
    }

    func testAdvanceSkipsDraws() {
        var a = RandomGenerator(seed: 9, stream: [2])
        let b = a.advanced(by: 1000)
        for _ in 0..<1000 { _ = a.next() }
        XCTAssertEqual(a, b)
        var c = b
        c.advance(by: 0)
        XCTAssertEqual(c, b)
        XCTAssertEqual(c.next(), a.next())
    }
}
