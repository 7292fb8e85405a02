/// A small, seedable, checkpointable random generator (SplitMix64).
///
/// Its whole state is one `UInt64`, so training checkpoints store it exactly
/// and a resumed run draws the same numbers. Independent streams come from
/// `RandomGenerator(seed:stream:)`, which mixes a stream id into the seed.
public struct RandomGenerator: RandomNumberGenerator, Sendable, Equatable {
    /// The full state; saving and restoring it reproduces the sequence.
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// A generator for a named sub-stream, e.g. `(seed, [layer, expert])`.
    public init(seed: UInt64, stream: [UInt64]) {
        var s = seed ^ 0x5851_F42D_4C95_7F2D
        for id in stream {
            var g = RandomGenerator(seed: s ^ (id &* 0x9E37_79B9_7F4A_7C15))
            s = g.next()
        }
        state = s
    }

    /// SplitMix64's increment: the state after `n` draws is `state + n · gamma`.
    @usableFromInline static let gamma: UInt64 = 0x9E37_79B9_7F4A_7C15

    /// Skips `n` draws in O(1): afterwards the generator is where `n` calls of `next()` leave it.
    public mutating func advance(by n: Int) {
        precondition(n >= 0, "advance(by:) needs n ≥ 0")
        state &+= UInt64(n) &* Self.gamma
    }

    /// The generator `n` draws ahead of this one (this one unchanged).
    public func advanced(by n: Int) -> RandomGenerator {
        var g = self
        g.advance(by: n)
        return g
    }

    public mutating func next() -> UInt64 {
        state &+= Self.gamma
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func nextFloat() -> Float {
        Float(next() >> 40) * (1.0 / 16_777_216.0)
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextDouble() -> Double {
        Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Uniform in [low, high).
    public mutating func uniform(_ low: Float, _ high: Float) -> Float {
        low + (high - low) * nextFloat()
    }

    /// Standard normal (Box–Muller, one value per call).
    public mutating func normal() -> Float {
        let u1 = max(nextDouble(), 1e-300)
        let u2 = nextDouble()
        return Float((-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2))
    }

    /// Uniform integer in 0..<bound.
    public mutating func nextInt(below bound: Int) -> Int {
        precondition(bound > 0)
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

    /// Fills `buffer` with uniform values in [-limit, limit).
    public mutating func fillUniform(_ buffer: UnsafeMutablePointer<Float>, count: Int, limit: Float) {
        for i in 0..<count { buffer[i] = uniform(-limit, limit) }
    }

    /// Fills `buffer` with normal values of the given standard deviation.
    public mutating func fillNormal(_ buffer: UnsafeMutablePointer<Float>, count: Int, std: Float) {
        for i in 0..<count { buffer[i] = normal() * std }
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) @usableFromInline func _log(_ x: Double) -> Double { Glibc.log(x) }
@inline(__always) @usableFromInline func _cos(_ x: Double) -> Double { Glibc.cos(x) }
#else
import Darwin
@inline(__always) @usableFromInline func _log(_ x: Double) -> Double { Darwin.log(x) }
@inline(__always) @usableFromInline func _cos(_ x: Double) -> Double { Darwin.cos(x) }
#endif
