import ThorTensor
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Conversions between Float32 tensors and their little-endian wire bytes.
public enum TensorCodec {
    /// The bf16 bits of `x`: round to nearest, ties to even; NaN stays a (quiet) NaN.
    @inline(__always) public static func bf16Bits(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        if (b & 0x7FFF_FFFF) > 0x7F80_0000 { return UInt16(truncatingIfNeeded: (b >> 16) | 0x0040) }
        let rounding = 0x7FFF + ((b >> 16) & 1)
        return UInt16(truncatingIfNeeded: (b &+ rounding) >> 16)
    }

    /// The Float32 whose upper half is `h`.
    @inline(__always) public static func float(bf16 h: UInt16) -> Float {
        Float(bitPattern: UInt32(h) << 16)
    }

    /// Writes `count` floats as bf16 into `out` (2·count bytes).
    public static func encodeBF16(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutableRawPointer) {
        let o = out.bindMemory(to: UInt16.self, capacity: count)
        for i in 0..<count { o[i] = bf16Bits(x[i]).littleEndian }
    }

    /// Reads `count` bf16 values from `bytes` into floats.
    public static func decodeBF16(_ bytes: UnsafeRawPointer, count: Int, into y: UnsafeMutablePointer<Float>) {
        for i in 0..<count {
            y[i] = float(bf16: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
        }
    }

    /// Rounds every element to bf16 precision in place (what a bf16 round trip gives).
    public static func roundToBF16(_ t: Tensor) {
        let p = t.pointer
        for i in 0..<t.count { p[i] = float(bf16: bf16Bits(p[i])) }
    }

    /// Element count of a wire shape, or a `badTensor` error naming what is wrong.
    public static func elementCount(shape: [Int64], what: String) throws -> Int {
        var n: Int64 = 1
        for (i, d) in shape.enumerated() {
            guard d >= 0 else { throw WireError.badTensor("\(what): dimension \(i) is negative (shape \(shape))") }
            let (m, overflow) = n.multipliedReportingOverflow(by: d)
            guard !overflow, m <= Int64(Int32.max) * 16 else {
                throw WireError.badTensor("\(what): shape \(shape) has too many elements")
            }
            n = m
        }
        return Int(n)
    }

    /// Checks dtype, dimensions and byte count; returns the element count.
    public static func validate(shape: [Int64], dtype: WireDType?, byteCount: Int, what: String) throws -> Int {
        guard let dtype else { throw WireError.badTensor("\(what): dtype is missing or unknown") }
        let n = try elementCount(shape: shape, what: what)
        guard byteCount == n * dtype.size else {
            throw WireError.badTensor("\(what): \(byteCount) bytes for shape \(shape) of \(dtype) (needs \(n * dtype.size))")
        }
        return n
    }

    /// Builds a Float32 tensor from wire bytes (copied), checking that the byte
    /// count matches shape × dtype size.
    public static func decode(shape: [Int64], dtype: WireDType?, bytes: UnsafeRawBufferPointer, what: String) throws -> Tensor {
        let n = try validate(shape: shape, dtype: dtype, byteCount: bytes.count, what: what)
        let dims = shape.map { Int($0) }
        if n == 0 { return Tensor(shape: dims) }
        let storage = UnsafeMutablePointer<Float>.allocate(capacity: n)
        switch dtype! {
        case .f32: memcpy(storage, bytes.baseAddress!, n * 4)
        case .bf16: decodeBF16(bytes.baseAddress!, count: n, into: storage)
        }
        return Tensor(adopting: storage, shape: dims)
    }
}
