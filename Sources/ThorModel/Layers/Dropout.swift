import ThorTensor
import CThorKernels

/// Inverted dropout with a kept mask: `mask[i]` is `1/(1−rate)` (kept) or 0 (dropped),
/// drawn from a seeded `RandomGenerator`, so that backward reuses it and a checkpointed
/// generator state reproduces it.
///
/// Shapes: inp/out/mask/dout/dinp [n].
public enum Dropout {
    /// Fills `mask` for `rate` in [0, 1). One uniform draw per element, in index order:
    /// element `i` gets draw `i` of `rng`, which ends `n` draws further. The generator jumps
    /// ahead in O(1) (`advanced(by:)`), so long masks are filled in ranges on up to `threads`
    /// threads with the same values.
    public static func makeMask(_ mask: UnsafeMutablePointer<Float>, count n: Int, rate: Float,
                                rng: inout RandomGenerator, threads: Int = Parallel.processors) {
        precondition(rate >= 0 && rate < 1, "dropout rate must be in [0, 1), got \(rate)")
        let keep = 1 / (1 - rate)
        let start = rng
        Parallel.forEachRange(n, threads: threads, minimumChunk: 1 << 15) { range in
            // `g.nextFloat() < rate ? 0 : keep` for each draw of `start.advanced(by: range.lowerBound)`,
            // vectorized in C (SplitMix64 draws are independent of each other): the same bits.
            thor_dropout_mask(mask + range.lowerBound, range.count, start.advanced(by: range.lowerBound).state, rate, keep)
        }
        rng.advance(by: n)
    }

    /// `out = inp ⊙ mask` (out may alias inp).
    public static func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                               mask: UnsafePointer<Float>, count n: Int) {
        for i in 0..<n { out[i] = inp[i] * mask[i] }
    }

    /// `dinp = dout ⊙ mask` (overwrites; dinp may alias dout).
    public static func backward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                mask: UnsafePointer<Float>, count n: Int) {
        for i in 0..<n { dinp[i] = dout[i] * mask[i] }
    }

    /// A mask `[count]` drawn as `makeMask` does, or nil when dropout is off
    /// (not training, or a zero rate).
    public static func mask(count: Int, rate: Float, training: Bool, rng: inout RandomGenerator) -> Tensor? {
        guard training, rate > 0 else { return nil }
        let mask = Tensor(shape: [count])
        makeMask(mask.pointer, count: count, rate: rate, rng: &rng)
        return mask
    }

    /// Applies dropout to `x` in place when training with a positive rate and returns the
    /// mask to keep for backward (nil: identity, nothing to undo).
    public static func apply(_ x: Tensor, rate: Float, training: Bool, rng: inout RandomGenerator) -> Tensor? {
        guard let mask = mask(count: x.count, rate: rate, training: training, rng: &rng) else { return nil }
        mask.reshape(x.shape)
        forward(out: x.pointer, inp: x.pointer, mask: mask.pointer, count: x.count)
        return mask
    }

    /// Backward of `apply` in place on `grad` (no-op for a nil mask).
    public static func applyBackward(_ grad: Tensor, mask: Tensor?) {
        guard let mask else { return }
        backward(dinp: grad.pointer, dout: grad.pointer, mask: mask.pointer, count: grad.count)
    }
}
