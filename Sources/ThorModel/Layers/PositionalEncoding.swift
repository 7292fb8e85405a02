import ThorTensor
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Sinusoidal positions (SPEC §2 fine print): position `pos` from 0; for `i < d/2`,
/// entry `i` is `sin(pos / 10000^(2i/d))` and entry `d/2 + i` is the `cos` of the same angle.
/// `d` must be even. The table has no parameters, so there is no backward.
public enum PositionalEncoding {
    /// The table `[positions, d]` (computed in Double, stored as Float).
    public static func table(positions: Int, dim d: Int) -> Tensor {
        precondition(d % 2 == 0, "sinusoidal positions need an even model width, got \(d)")
        let t = Tensor(shape: [positions, d])
        let p = t.pointer, half = d / 2
        for pos in 0..<positions {
            for i in 0..<half {
                let angle = Double(pos) / pow(10000.0, Double(2 * i) / Double(d))
                p[pos * d + i] = Float(sin(angle))
                p[pos * d + half + i] = Float(cos(angle))
            }
        }
        return t
    }

    /// `x[b, s] += table[start + s]` for a sentence-major `[batch, length, d]` buffer.
    public static func add(
        to x: UnsafeMutablePointer<Float>, table: UnsafePointer<Float>,
        batch: Int, length: Int, start: Int, d: Int
    ) {
        // Each sentence's rows and the table rows start..<start+length are both contiguous.
        for b in 0..<batch {
            Kernels.add(table + start * d, into: x + b * length * d, count: length * d)
        }
    }
}
