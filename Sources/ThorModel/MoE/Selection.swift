import ThorTensor

/// Which experts each token uses and with what weight (SPEC §2.7), after capacity.
///
/// Slot `t·slots + s` for `s < count[t]` holds the `s`-th selected expert of token `t`
/// (top-k / top-p: in descending probability, ties lower id first; hard: `j` order),
/// its combine weight, and whether capacity kept it (1) or dropped it (0).
public final class RoutingDecision: @unchecked Sendable {
    public let rows: Int
    /// Maximum experts per token.
    public let slots: Int
    /// Experts selected per token, before capacity dropping (0 for padding).
    public let count: IndexBuffer
    public let experts: IndexBuffer
    public let weights: Tensor
    public let kept: IndexBuffer
    /// Weights are `p_e / Σ_{S_t} p` (top-k with k ≥ 2).
    public let renormalized: Bool

    public init(rows: Int, slots: Int, renormalized: Bool) {
        self.rows = rows; self.slots = slots; self.renormalized = renormalized
        count = IndexBuffer(count: rows)
        experts = IndexBuffer(count: rows * slots)
        weights = Tensor(shape: [rows * slots])
        kept = IndexBuffer(count: rows * slots, repeating: 1)
    }

    /// Selected experts of token `t` (before dropping), in slot order.
    public func selected(_ t: Int) -> [Int] { (0..<Int(count[t])).map { Int(experts[t * slots + $0]) } }
    /// Experts of token `t` that capacity kept, in slot order.
    public func keptExperts(_ t: Int) -> [Int] {
        (0..<Int(count[t])).filter { kept[t * slots + $0] != 0 }.map { Int(experts[t * slots + $0]) }
    }
    /// Combine weight of slot `s` of token `t`.
    public func weight(_ t: Int, _ s: Int) -> Float { weights[t * slots + s] }
    /// Kept assignments in total.
    public var keptAssignments: Int {
        var n = 0
        for t in 0..<rows { for s in 0..<Int(count[t]) where kept[t * slots + s] != 0 { n += 1 } }
        return n
    }
}

/// Expert selection rules over the token router's probabilities `p` [rows, N]
/// (0 outside the candidates, so experts outside `C` are never selected).
public enum Selection {
    /// Top-k: the `k` largest `p_e` with `p_e > 0` (ties: lower id). Weights raw for k = 1,
    /// renormalized over the selection for k ≥ 2. Rows with `mask == 0` select nothing.
    public static func topK(_ p: UnsafePointer<Float>, rows: Int, experts n: Int, k: Int,
                            mask: UnsafePointer<Float>) -> RoutingDecision {
        let d = RoutingDecision(rows: rows, slots: k, renormalized: k >= 2)
        let order = IndexBuffer(count: k)
        for t in 0..<rows where mask[t] != 0 {
            let pt = p + t * n
            RoutingKernels.topK(pt, count: n, k: k, into: order.pointer)
            var c = 0
            var sum: Float = 0
            for s in 0..<k where pt[Int(order[s])] > 0 {
                d.experts[t * k + c] = order[s]; sum += pt[Int(order[s])]; c += 1
            }
            d.count[t] = Int32(c)
            let scale: Float = k >= 2 ? 1 / sum : 1
            for s in 0..<c { d.weights[t * k + s] = pt[Int(d.experts[t * k + s])] * scale }
        }
        return d
    }

    /// Top-p: sort `p` descending (ties lower id first), keep the shortest prefix whose
    /// cumulative sum is strictly greater than `threshold` (all experts with `p > 0` when rounding
    /// never crosses it), capped at `maxExperts`; weights are the raw `p_e`.
    public static func topP(_ p: UnsafePointer<Float>, rows: Int, experts n: Int, threshold: Float,
                            maxExperts: Int?, mask: UnsafePointer<Float>) -> RoutingDecision {
        let cap = min(n, maxExperts ?? n)
        let d = RoutingDecision(rows: rows, slots: cap, renormalized: false)
        let order = IndexBuffer(count: n)
        for t in 0..<rows where mask[t] != 0 {
            let pt = p + t * n
            RoutingKernels.topK(pt, count: n, k: n, into: order.pointer)
            var c = 0
            var cum: Float = 0
            while c < cap {
                let e = Int(order[c])
                if pt[e] <= 0 { break }
                d.experts[t * cap + c] = Int32(e); d.weights[t * cap + c] = pt[e]
                cum += pt[e]; c += 1
                if cum > threshold { break }
            }
            d.count[t] = Int32(c)
        }
        return d
    }

    /// Hard routing: sentence `b` of task `τ = labels[b]` uses experts `(τ·k + j) mod N`, `j < k`,
    /// weight `1/k`. `length` rows per sentence.
    public static func hard(labels: [Int], length: Int, experts n: Int, k: Int,
                            mask: UnsafePointer<Float>) -> RoutingDecision {
        let rows = labels.count * length
        let d = RoutingDecision(rows: rows, slots: k, renormalized: false)
        for (b, tau) in labels.enumerated() {
            for i in 0..<length {
                let t = b * length + i
                guard mask[t] != 0 else { continue }
                for j in 0..<k {
                    d.experts[t * k + j] = Int32((tau * k + j) % n)
                    d.weights[t * k + j] = 1 / Float(k)
                }
                d.count[t] = Int32(k)
            }
        }
        return d
    }

    /// Capacity (training only): each expert keeps at most `ceil(factor · assignments / N)`
    /// assignments, in batch (row, then slot) order; later ones are dropped, weights unchanged.
    /// Returns the capacity.
    @discardableResult
    public static func applyCapacity(_ d: RoutingDecision, factor: Float, experts n: Int) -> Int {
        var assignments = 0
        for t in 0..<d.rows { assignments += Int(d.count[t]) }
        let cap = Int((Double(factor) * Double(assignments) / Double(n)).rounded(.up))
        var used = [Int](repeating: 0, count: n)
        for t in 0..<d.rows {
            for s in 0..<Int(d.count[t]) {
                let e = Int(d.experts[t * d.slots + s])
                if used[e] < cap { used[e] += 1; d.kept[t * d.slots + s] = 1 } else { d.kept[t * d.slots + s] = 0 }
            }
        }
        return cap
    }
}
