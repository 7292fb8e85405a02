import XCTest
import CThorKernels

/// `thor_running_max` (CThorKernels) against the loop it replaces, `m = max(m, x[i])` in index
/// order from −inf, bit for bit: NaNs, infinities, and zeros of both signs as the maximum.
final class RunningMaxTests: XCTestCase {
    private func sequential(_ x: [Float]) -> Float {
        var m = -Float.infinity
        for v in x { m = max(m, v) }
        return m
    }

    private func check(_ x: [Float], _ note: String) {
        let got = thor_running_max(x, x.count)
        let want = sequential(x)
        XCTAssertEqual(got.bitPattern, want.bitPattern, "\(note): got \(got), loop \(want), count \(x.count)")
    }

    func testMatchesSequentialLoopBitForBit() {
        var state: UInt64 = 12345
        func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state >> 11
        }
        let specials: [Float] = [0, -0.0, .nan, -.infinity, .infinity, .leastNonzeroMagnitude, -.leastNonzeroMagnitude]
        // Every length up to 70 (lane tails), then long rows like the vocabulary's.
        for count in Array(0...70) + [255, 8000, 8001] {
            for trial in 0..<6 {
                var x = (0..<count).map { _ in Float(Int(next() % 2001) - 1000) / 100 }
                switch trial {
                case 0: break
                case 1: x = x.map { -abs($0) - 1 }                      // all negative
                case 2: x = x.map { _ in next() % 2 == 0 ? 0 : -0.0 }   // zero maximum, mixed signs
                case 3: x = x.map { -abs($0) }; if count > 0 { x[Int(next() % UInt64(count))] = 0 }
                case 4: x = x.map { next() % 3 == 0 ? .nan : $0 }      // NaNs are skipped
                default: x = x.map { _ in specials[Int(next() % UInt64(specials.count))] }
                }
                check(x, "trial \(trial)")
            }
        }
        check([.nan, .nan], "only NaN")
        check([-.infinity, .nan], "−inf and NaN")
        check(Array(repeating: 0, count: 40) + [-0.0], "last zero negative")
        check([-0.0] + Array(repeating: 0, count: 40), "last zero positive")
    }
}
