import ThorTensor

/// The kept token→expert assignments of one forward, grouped per expert in ascending
/// expert id, rows of each group in ascending token order (what the backend receives).
public struct ExpertDispatch: @unchecked Sendable {
    /// Experts with at least one token, ascending.
    public let experts: [Int]
    /// Group `i` is `rows[start[i]..<start[i+1]]`.
    public let start: [Int]
    /// Token row of each assignment.
    public let rows: IndexBuffer
    /// Slot (`t·slots + s` in the `RoutingDecision`) of each assignment.
    public let slots: IndexBuffer

    public init(_ d: RoutingDecision, experts n: Int) {
        var counts = [Int](repeating: 0, count: n)
        for t in 0..<d.rows {
            for s in 0..<Int(d.count[t]) where d.kept[t * d.slots + s] != 0 { counts[Int(d.experts[t * d.slots + s])] += 1 }
        }
        var offset = [Int](repeating: 0, count: n + 1)
        for e in 0..<n { offset[e + 1] = offset[e] + counts[e] }
        let total = offset[n]
        let rows = IndexBuffer(count: total), slots = IndexBuffer(count: total)
        var fill = offset
        for t in 0..<d.rows {
            for s in 0..<Int(d.count[t]) where d.kept[t * d.slots + s] != 0 {
                let e = Int(d.experts[t * d.slots + s])
                rows[fill[e]] = Int32(t); slots[fill[e]] = Int32(t * d.slots + s); fill[e] += 1
            }
        }
        var ex: [Int] = [], st: [Int] = [0]
        for e in 0..<n where counts[e] > 0 { ex.append(e); st.append(offset[e + 1]) }
        // `start` indexes into the compacted groups: groups are contiguous in ascending e already.
        experts = ex; start = st; self.rows = rows; self.slots = slots
    }

    /// Tokens of group `i` gathered from x [n, d].
    public func gather(_ i: Int, from x: UnsafePointer<Float>, dim d: Int) -> Tensor {
        let out = Tensor(uninitializedShape: [start[i + 1] - start[i], d])  // every row is written
        DispatchKernels.gather(start[i]..<start[i + 1], rows: rows, from: x, dim: d, into: out.pointer)
        return out
    }
}
