import ThorTensor
import ThorExperts

/// An MoE layer's state across incremental decoding steps: the running sum and count of the
/// decoder context's prefix (SPEC §2.4), one row per hypothesis. The task representation `r`
/// is not kept here: the decoder cache holds it once and passes it to every layer.
public final class MoEDecodingState: IncrementalState {
    public private(set) var batchSize: Int
    public let modelDim: Int
    /// `Σ_{i≤t, non-pad} h_i` [B, d].
    public private(set) var prefixSum: Tensor
    /// Non-pad positions so far [B].
    public private(set) var prefixCount: Tensor

    public init(batchSize b: Int, modelDim d: Int) {
        batchSize = b; modelDim = d
        prefixSum = Tensor(shape: [b, d]); prefixCount = Tensor(shape: [b])
    }

    /// One position per row: adds `h` [B, d] (non-pad rows) to the prefix and writes `c` [B, d]
    /// and `1/count` [B], exactly as `Context.decoderForward` does over a whole sequence.
    func step(h: Tensor, mask: UnsafePointer<Float>, c: Tensor, inverse: Tensor) {
        let d = modelDim
        for s in 0..<batchSize {
            inverse[s] = Context.step(h: h.pointer + s * d, isToken: mask[s] != 0, sum: prefixSum.pointer + s * d,
                                      count: &prefixCount.pointer[s], dim: d, c: c.pointer + s * d)
        }
    }

    /// Prefix-LM: starts every row from its prefix (`sums` [B, d], `counts` [B]) as the prefix pass
    /// computed them, so the target steps continue the same running sum as the full pass.
    func startFromPrefix(sums: Tensor, counts: Tensor) {
        prefixSum = Tensor(copying: sums); prefixCount = Tensor(copying: counts)
    }

    public func reorder(_ rows: [Int]) {
        prefixSum = gatherRows(prefixSum, rows); prefixCount = gatherRows(prefixCount, rows)
        batchSize = rows.count
    }
}
