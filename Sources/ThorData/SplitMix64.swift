/// The random generator of the data pipeline: SplitMix64, the same sequence as
/// `ThorTensor.RandomGenerator` (ThorData depends on nothing, so it has its own).
///
/// The whole state is one `UInt64`; storing and restoring `state` reproduces the
/// sequence exactly, which is what makes data order resumable.
public struct SplitMix64: Sendable, Equatable {
    /// The full state.
    public var state: UInt64

    /// A generator started at `seed`.
    public init(seed: UInt64) { state = seed }

    /// A generator for a named sub-stream of `seed` (e.g. `[split, epoch]`).
    public init(seed: UInt64, stream: [UInt64]) {
        var s = seed ^ 0x5851_F42D_4C95_7F2D
        for id in stream {
            var g = SplitMix64(seed: s ^ (id &* 0x9E37_79B9_7F4A_7C15))
            s = g.next()
        }
        state = s
    }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextDouble() -> Double {
        Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Uniform integer in `0..<bound` (modulo reduction; the bias is below 2^-40 for the bounds used here).
    public mutating func nextInt(below bound: Int) -> Int {
        precondition(bound > 0, "nextInt(below:) needs a positive bound")
        return Int(next() % UInt64(bound))
    }

    /// Shuffles `array` in place (Fisher–Yates, deterministic for a given state).
    public mutating func shuffle<T>(_ array: inout [T]) {
        guard array.count > 1 else { return }
        for i in stride(from: array.count - 1, to: 0, by: -1) {
            let j = nextInt(below: i + 1)
            if i != j { array.swapAt(i, j) }
        }
    }
}
