import XCTest
import CThorKernels
#if canImport(Glibc)
import Glibc
#endif

/// CThorKernels' `expf` (expf.c) against the C library's `expf`, bit for bit: every finite
/// float ≤ 0 (the softmaxes' whole domain: they exponentiate `x − max`), the special values and
/// range limits, and a sample of the positive floats. All 2^32 inputs and every clone:
/// `scripts/check-expf.sh` (docs/benchmarks.md).
final class ExpfTests: XCTestCase {
    private func bits(_ x: Float) -> UInt32 { x.bitPattern }

    /// Compares `thor_expf_array`, `thor_expf_shifted` (shift 0), the in-place variant and (if
    /// `scalar`) the scalar `thor_expf` with `expf` on `inputs`; returns the number of mismatches
    /// (reports the first few).
    private func mismatches(_ inputs: UnsafeMutablePointer<Float>, count n: Int, scalar: Bool,
                            buffers b: (want: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>)) -> Int {
        for i in 0..<n { b.want[i] = expf(inputs[i]) }
        var bad = 0
        func compare(_ what: String) {
            for i in 0..<n where bits(b.out[i]) != bits(b.want[i]) {
                if bad < 5 {
                    let x = inputs[i]
                    XCTFail("\(what): x = \(x) (0x\(String(bits(x), radix: 16))): got 0x\(String(bits(b.out[i]), radix: 16)), libm 0x\(String(bits(b.want[i]), radix: 16))")
                }
                bad += 1
            }
        }
        thor_expf_array(inputs, b.out, n)
        compare("thor_expf_array")
        // x − 0 is x for every x (−0 − 0 = −0), so these equal expf(x) too.
        thor_expf_shifted(inputs, 0, b.out, n)
        compare("thor_expf_shifted")
        b.out.update(from: inputs, count: n)
        thor_expf_shifted_in_place(b.out, 0, n)
        compare("thor_expf_shifted_in_place")
        if scalar {
            for i in 0..<n { b.out[i] = thor_expf(inputs[i]) }
            compare("thor_expf")
        }
        return bad
    }

    func testEveryFiniteNonPositiveFloatMatchesLibm() {
        // Bit patterns 0x8000_0000 (−0) … 0xff7f_ffff (−greatest finite), plus +0, in chunks.
        let chunk = 1 << 20
        let x = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
        let want = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
        let out = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
        defer { x.deallocate(); want.deallocate(); out.deallocate() }
        var total = 0
        var pattern: UInt64 = 0x8000_0000
        let end: UInt64 = 0xff80_0000
        while pattern < end {
            let n = Int(min(UInt64(chunk), end - pattern))
            for i in 0..<n { x[i] = Float(bitPattern: UInt32(pattern + UInt64(i))) }
            // The scalar entry on every 64th chunk only (it is the same body, not vectorized).
            total += mismatches(x, count: n, scalar: (pattern >> 20) % 64 == 0, buffers: (want, out))
            pattern += UInt64(n)
            if total > 0 { break }
        }
        x[0] = 0
        total += mismatches(x, count: 1, scalar: true, buffers: (want, out))
        XCTAssertEqual(total, 0)
    }

    func testSpecialValuesRangeLimitsAndPositiveSampleMatchLibm() {
        var values: [Float] = [
            .infinity, -.infinity, .nan, -.nan, .signalingNaN, Float(bitPattern: 0x7fc0_1234), Float(bitPattern: 0xff80_0001),
            0, -0.0, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
            88, 88.72, 89, -88, -100, -103.0, -103.5, -104, 1, -1, 0.5, 1e-8, -1e-8,
        ]
        // Around each range limit of the algorithm (overflow, underflow, the subnormal band, |x| = 88).
        for limit: Float in [0x1.62e42ep6, -0x1.9fe368p6, -0x1.9d1d9ep6, 88, -88] {
            var v = limit
            for _ in 0..<64 { v = v.nextDown }
            for _ in 0..<128 { values.append(v); v = v.nextUp }
        }
        // Every 4099th positive pattern (the softmaxes never see x > 0, but the function is general).
        var p: UInt32 = 0
        while p < 0x7f80_0000 { values.append(Float(bitPattern: p)); p += 4099 }
        // Odd length (a vector loop's tail), values out of order.
        var generator = SeededGenerator(state: 7)
        values.shuffle(using: &generator)
        let n = values.count
        let x = UnsafeMutablePointer<Float>.allocate(capacity: n)
        let want = UnsafeMutablePointer<Float>.allocate(capacity: n)
        let out = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { x.deallocate(); want.deallocate(); out.deallocate() }
        x.initialize(from: values, count: n)
        XCTAssertEqual(mismatches(x, count: n, scalar: true, buffers: (want, out)), 0)
        // The overflow and underflow results themselves (not only "as libm").
        XCTAssertEqual(thor_expf(89), .infinity)
        XCTAssertEqual(bits(thor_expf(-104)), 0)
        XCTAssertEqual(thor_expf(-103.5), .leastNonzeroMagnitude)
        XCTAssertEqual(thor_expf(-.infinity), 0)
        XCTAssertTrue(thor_expf(.nan).isNaN)
    }

    func testShiftIsSubtractedInFloatFirst() {
        // expf(x − shift) with the difference rounded to float, as the Swift expression had it.
        let x: [Float] = [1.5, -2.25, 3.0000002, 7, -0.1, 100, -200]
        let shift: Float = 3.0000002
        var out = [Float](repeating: 0, count: x.count)
        thor_expf_shifted(x, shift, &out, x.count)
        for i in 0..<x.count { XCTAssertEqual(bits(out[i]), bits(expf(x[i] - shift)), "x = \(x[i])") }
    }
}

/// A small deterministic generator for shuffling (splitmix64).
private struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
