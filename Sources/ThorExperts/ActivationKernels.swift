/// ReLU passes of `FeedForward`, eight lanes at a time and branch-free.
///
/// Every lane computes exactly what the scalar rule computes (`v > 0 ? v : 0`, NaN and
/// `-0` give `+0`), so results are bit-identical to the scalar loops; the point is to avoid
/// one unpredictable branch per element (ReLU's sign is a coin flip), which made the
/// scalar backward ~6× slower than this.
enum ReLUKernels {
    typealias Lanes = SIMD8<Float>

    @inline(__always) static func load(_ p: UnsafePointer<Float>) -> Lanes {
        UnsafeRawPointer(p).loadUnaligned(as: Lanes.self)
    }

    @inline(__always) static func store(_ v: Lanes, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lanes.self)
    }

    /// One row: `h[j] += b[j]`, then `a[j] = h[j] > 0 ? h[j] : 0`, for `j < n` (one pass).
    @inline(__always)
    static func biasForward(h: UnsafeMutablePointer<Float>, bias b: UnsafePointer<Float>,
                            a: UnsafeMutablePointer<Float>, count n: Int) {
        let zero = Lanes(repeating: 0)
        var j = 0
        while j + Lanes.scalarCount <= n {
            let v = load(h + j) + load(b + j)
            store(v, h + j)
            store(zero.replacing(with: v, where: v .> zero), a + j)
            j += Lanes.scalarCount
        }
        while j < n {
            let v = h[j] + b[j]
            h[j] = v
            a[j] = v > 0 ? v : 0
            j += 1
        }
    }

    /// One row: `dh[j] = h[j] > 0 ? da[j] : 0` for `j < n`.
    @inline(__always)
    static func backward(dh: UnsafeMutablePointer<Float>, da: UnsafePointer<Float>, h: UnsafePointer<Float>, count n: Int) {
        let zero = Lanes(repeating: 0)
        var j = 0
        while j + Lanes.scalarCount <= n {
            store(zero.replacing(with: load(da + j), where: load(h + j) .> zero), dh + j)
            j += Lanes.scalarCount
        }
        while j < n {
            dh[j] = h[j] > 0 ? da[j] : 0
            j += 1
        }
    }
}
