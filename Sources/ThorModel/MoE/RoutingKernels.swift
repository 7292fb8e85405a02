import ThorTensor
#if canImport(Glibc)
import Glibc
#endif

/// A fixed-size buffer of `Int32` (expert ids, row indices, counts) for hot loops.
public final class IndexBuffer: @unchecked Sendable {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Int32>
    public init(count: Int, repeating value: Int32 = 0) {
        self.count = count
        pointer = .allocate(capacity: max(count, 1))
        pointer.initialize(repeating: value, count: max(count, 1))
    }
    deinit { pointer.deallocate() }
    public subscript(i: Int) -> Int32 {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
    public var array: [Int] { (0..<count).map { Int(pointer[$0]) } }
}

/// Small kernels of the routing levels (softmax, top-K) over raw rows.
public enum RoutingKernels {
    /// In-place softmax of each row of `x` [rows, cols]; where `allowed` (rows × cols, 1/0) is given,
    /// disallowed entries get probability exactly 0.
    public static func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int,
                                   allowed: UnsafePointer<Float>? = nil) {
        for r in 0..<rows {
            let row = x + r * cols
            let a = allowed.map { $0 + r * cols }
            var m = -Float.infinity
            for j in 0..<cols where a == nil || a![j] != 0 { m = max(m, row[j]) }
            var s: Float = 0
            for j in 0..<cols {
                if let a, a[j] == 0 { row[j] = 0; continue }
                let e = expf(row[j] - m)
                row[j] = e; s += e
            }
            let inv = 1 / s
            for j in 0..<cols { row[j] *= inv }
        }
    }

    /// Softmax backward for one row: `dz = p ⊙ (dp − Σ p·dp)`, written into `dz` (may alias `dp`).
    @inline(__always)
    public static func softmaxBackward(p: UnsafePointer<Float>, dp: UnsafePointer<Float>,
                                       dz: UnsafeMutablePointer<Float>, count n: Int) {
        var dot: Float = 0
        for j in 0..<n { dot += p[j] * dp[j] }
        for j in 0..<n { dz[j] = p[j] * (dp[j] - dot) }
    }

    /// One row of a max-pool: where `rows[j] < 0` (nothing pooled yet) or `x[j] > u[j]`, sets
    /// `u[j] = x[j]` and `rows[j] = row` (ties keep the earlier row). Eight lanes at a time,
    /// branch-free, the same result as the scalar rule.
    @inline(__always)
    public static func maxPoolRow(_ x: UnsafePointer<Float>, row: Int32, into u: UnsafeMutablePointer<Float>,
                                  rows: UnsafeMutablePointer<Int32>, count n: Int) {
        typealias F = SIMD8<Float>
        typealias I = SIMD8<Int32>
        let rowLanes = I(repeating: row), none = I(repeating: 0)
        var j = 0
        while j + F.scalarCount <= n {
            let xv = UnsafeRawPointer(x + j).loadUnaligned(as: F.self)
            let uv = UnsafeRawPointer(u + j).loadUnaligned(as: F.self)
            let rv = UnsafeRawPointer(rows + j).loadUnaligned(as: I.self)
            let take = (rv .< none) .| (xv .> uv)
            UnsafeMutableRawPointer(u + j).storeBytes(of: uv.replacing(with: xv, where: take), as: F.self)
            UnsafeMutableRawPointer(rows + j).storeBytes(of: rv.replacing(with: rowLanes, where: take), as: I.self)
            j += F.scalarCount
        }
        while j < n {
            if rows[j] < 0 || x[j] > u[j] { u[j] = x[j]; rows[j] = row }
            j += 1
        }
    }

    /// Indices of the `k` largest entries of `v[0..<n]`, ties to the lower index, in descending
    /// order of value, written to `out`.
    public static func topK(_ v: UnsafePointer<Float>, count n: Int, k: Int, into out: UnsafeMutablePointer<Int32>) {
        var filled = 0
        for j in 0..<n {
            // insertion into the sorted prefix out[0..<filled] (value desc, index asc)
            let x = v[j]
            if filled == k && !(x > v[Int(out[k - 1])]) { continue }
            var pos = min(filled, k - 1)
            if filled < k { filled += 1 }
            while pos > 0 && x > v[Int(out[pos - 1])] { out[pos] = out[pos - 1]; pos -= 1 }
            out[pos] = Int32(j)
        }
    }
}
