import Foundation
import ThorTensor

/// Element types of the safetensors format that thor reads (it writes F32 only).
public enum SafeTensorsDType: String, Sendable, CaseIterable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", i64 = "I64", i32 = "I32"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16: return 2
        case .i64: return 8
        }
    }
}

/// A problem with a safetensors file; the message names the file and what is wrong.
public struct SafeTensorsError: Error, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One tensor as stored: element type, shape and little-endian bytes.
public struct SafeTensorsEntry: Sendable, Equatable {
    public var dtype: SafeTensorsDType
    public var shape: [Int]
    public var bytes: [UInt8]

    /// The elements converted to Float32 (F16/BF16 widened exactly, integers rounded to nearest).
    public func floats() -> [Float] {
        let n = shape.reduce(1, *)
        var out = [Float](repeating: 0, count: n)
        bytes.withUnsafeBytes { raw in
            for i in 0..<n {
                switch dtype {
                case .f32: out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                case .bf16: out[i] = Float(bitPattern: UInt32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16)
                case .f16: out[i] = halfToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                case .i32: out[i] = Float(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))
                case .i64: out[i] = Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)))
                }
            }
        }
        return out
    }

    /// The elements of an integer tensor (I32/I64) as Int64. - Throws: for a float dtype.
    public func integers() throws -> [Int64] {
        let n = shape.reduce(1, *)
        return try bytes.withUnsafeBytes { raw in
            switch dtype {
            case .i32: return (0..<n).map { Int64(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
            case .i64: return (0..<n).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
            default: throw SafeTensorsError("tensor of dtype \(dtype.rawValue) read as integers")
            }
        }
    }
}

/// IEEE half → Float (exact).
func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h >> 15) << 31
    let exp = Int((h >> 10) & 0x1F)
    let mant = UInt32(h & 0x3FF)
    if exp == 0 {
        let v = Float(mant) * Float(sign: .plus, exponent: -24, significand: 1)
        return sign != 0 ? -v : v
    }
    if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
    return Float(bitPattern: sign | UInt32(exp - 15 + 127) << 23 | (mant << 13))
}

/// The safetensors format (Hugging Face): 8-byte little-endian header length N, an
/// N-byte UTF-8 JSON header `{"__metadata__": {string: string}, name: {"dtype": "F32",
/// "shape": [...], "data_offsets": [begin, end]}, ...}` padded with spaces to a multiple
/// of 8, then the tensor bytes (offsets relative to the end of the header).
///
/// Writing is deterministic (metadata first, keys in sorted order, tensors laid out in name
/// order) and atomic (temporary file + rename). Reading checks everything the Rust reference
/// checks: header length, JSON shape, dtypes, shapes, offsets in range, contiguous and
/// non-overlapping, and that the byte count matches the shape.
public struct SafeTensorsFile: Sendable, Equatable {
    /// Largest header accepted (as the Rust reference: 100 MB).
    public static let maxHeaderLength = 100_000_000

    public var entries: [String: SafeTensorsEntry]
    public var metadata: [String: String]

    public init(entries: [String: SafeTensorsEntry] = [:], metadata: [String: String] = [:]) {
        self.entries = entries; self.metadata = metadata
    }

    /// A file of F32 tensors.
    public init(tensors: [String: Tensor], metadata: [String: String] = [:]) {
        var entries: [String: SafeTensorsEntry] = [:]
        for (name, t) in tensors {
            var bytes = [UInt8](repeating: 0, count: t.count * 4)
            bytes.withUnsafeMutableBytes { raw in
                for i in 0..<t.count { raw.storeBytes(of: t.storage[i].bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            }
            entries[name] = SafeTensorsEntry(dtype: .f32, shape: t.shape, bytes: bytes)
        }
        self.init(entries: entries, metadata: metadata)
    }

    /// Names of the tensors, sorted.
    public var names: [String] { entries.keys.sorted() }

    /// The tensor `name` as Float32, optionally checking its shape.
    /// - Throws: if it is missing or its shape differs from `shape`.
    public func tensor(_ name: String, shape: [Int]? = nil) throws -> Tensor {
        guard let e = entries[name] else { throw SafeTensorsError("no tensor named '\(name)'") }
        if let shape, shape != e.shape {
            throw SafeTensorsError("tensor '\(name)' has shape \(e.shape), expected \(shape)")
        }
        return Tensor(shape: e.shape, values: e.floats())
    }

    /// Copies the F32 tensor `name` into `destination`, whose shape must match and whose dtype must be F32.
    public func load(_ name: String, into destination: Tensor) throws {
        guard let e = entries[name] else { throw SafeTensorsError("no tensor named '\(name)'") }
        guard e.shape == destination.shape else {
            throw SafeTensorsError("tensor '\(name)' has shape \(e.shape), expected \(destination.shape)")
        }
        guard e.dtype == .f32 else { throw SafeTensorsError("tensor '\(name)' has dtype \(e.dtype.rawValue), expected F32") }
        let floats = e.floats()
        for i in 0..<floats.count { destination.storage[i] = floats[i] }
    }

    // MARK: Encoding

    /// The file bytes.
    public func serialized() -> [UInt8] {
        var header = "{"
        var parts: [String] = []
        if !metadata.isEmpty {
            parts.append("\"__metadata__\":{" + metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
                .joined(separator: ",") + "}")
        }
        var offset = 0
        for name in names {
            let e = entries[name]!
            parts.append("\(jsonString(name)):{\"dtype\":\"\(e.dtype.rawValue)\",\"shape\":[\(e.shape.map(String.init).joined(separator: ","))],"
                         + "\"data_offsets\":[\(offset),\(offset + e.bytes.count)]}")
            offset += e.bytes.count
        }
        header += parts.joined(separator: ",") + "}"
        var headerBytes = Array(header.utf8)
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
        var out: [UInt8] = []
        out.reserveCapacity(8 + headerBytes.count + offset)
        var n = UInt64(headerBytes.count).littleEndian
        withUnsafeBytes(of: &n) { out += $0 }
        out += headerBytes
        for name in names { out += entries[name]!.bytes }
        return out
    }

    /// Writes the file atomically (temporary file in the same directory, then rename).
    public func write(to path: String) throws {
        do { try Data(serialized()).write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
            throw SafeTensorsError("\(path): cannot write (\(error.localizedDescription))")
        }
    }

    // MARK: Decoding

    /// Reads a file. - Throws: ``SafeTensorsError`` naming the file and the problem.
    public static func read(path: String) throws -> SafeTensorsFile {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw SafeTensorsError("\(path): cannot read (\(error.localizedDescription))")
        }
        do { return try parse([UInt8](data)) } catch let e as SafeTensorsError {
            throw SafeTensorsError("\(path): \(e.message)")
        }
    }

    /// Parses file bytes.
    public static func parse(_ bytes: [UInt8]) throws -> SafeTensorsFile {
        guard bytes.count >= 8 else { throw SafeTensorsError("truncated: \(bytes.count) bytes, less than the 8-byte header length") }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n <= UInt64(maxHeaderLength) else { throw SafeTensorsError("header length \(n) is absurd (limit \(maxHeaderLength))") }
        let headerLength = Int(n)
        guard 8 + headerLength <= bytes.count else {
            throw SafeTensorsError("truncated: header length \(headerLength) but only \(bytes.count - 8) bytes follow")
        }
        guard headerLength >= 2 else { throw SafeTensorsError("header of \(headerLength) bytes cannot hold a JSON object") }
        let headerData = Data(bytes[8..<(8 + headerLength)])
        guard String(data: headerData, encoding: .utf8) != nil else { throw SafeTensorsError("header is not valid UTF-8") }
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: headerData) } catch {
            throw SafeTensorsError("header is not valid JSON")
        }
        guard let object = json as? [String: Any] else { throw SafeTensorsError("header is not a JSON object") }
        let dataSize = bytes.count - 8 - headerLength
        var metadata: [String: String] = [:]
        var spans: [(begin: Int, end: Int, name: String)] = []
        var entries: [String: SafeTensorsEntry] = [:]
        for (name, value) in object {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw SafeTensorsError("__metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw SafeTensorsError("__metadata__ value for '\(k)' is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let info = value as? [String: Any] else { throw SafeTensorsError("entry '\(name)' is not an object") }
            guard let ds = info["dtype"] as? String else { throw SafeTensorsError("tensor '\(name)' has no dtype") }
            guard let dtype = SafeTensorsDType(rawValue: ds) else {
                throw SafeTensorsError("tensor '\(name)' has unsupported dtype '\(ds)'")
            }
            guard let shapeAny = info["shape"] as? [Any], let shape = integers(shapeAny), shape.allSatisfy({ $0 >= 0 }) else {
                throw SafeTensorsError("tensor '\(name)' has an invalid shape")
            }
            guard let offAny = info["data_offsets"] as? [Any], let off = integers(offAny), off.count == 2 else {
                throw SafeTensorsError("tensor '\(name)' has invalid data_offsets")
            }
            let (begin, end) = (off[0], off[1])
            guard begin >= 0, begin <= end, end <= dataSize else {
                throw SafeTensorsError("tensor '\(name)' data_offsets [\(begin), \(end)] out of range (data has \(dataSize) bytes: truncated file?)")
            }
            var count = 1
            for d in shape {
                let (p, o) = count.multipliedReportingOverflow(by: d)
                guard !o else { throw SafeTensorsError("tensor '\(name)' shape \(shape) overflows") }
                count = p
            }
            let (needed, tooMany) = count.multipliedReportingOverflow(by: dtype.size)
            guard !tooMany else { throw SafeTensorsError("tensor '\(name)' shape \(shape) overflows") }
            guard needed == end - begin else {
                throw SafeTensorsError("tensor '\(name)': \(dtype.rawValue) shape \(shape) needs \(needed) bytes, data_offsets give \(end - begin)")
            }
            spans.append((begin, end, name))
            entries[name] = SafeTensorsEntry(dtype: dtype, shape: shape, bytes: Array(bytes[(8 + headerLength + begin)..<(8 + headerLength + end)]))
        }
        spans.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var cursor = 0
        for s in spans {
            guard s.begin >= cursor else { throw SafeTensorsError("tensor '\(s.name)' overlaps the previous tensor's data") }
            guard s.begin == cursor else { throw SafeTensorsError("gap in the data before tensor '\(s.name)' (offset \(cursor) to \(s.begin))") }
            cursor = s.end
        }
        guard cursor == dataSize else {
            throw SafeTensorsError("data has \(dataSize) bytes but the tensors cover \(cursor) (trailing bytes)")
        }
        return SafeTensorsFile(entries: entries, metadata: metadata)
    }

    private static func integers(_ a: [Any]) -> [Int]? {
        var out: [Int] = []
        for v in a {
            if let n = v as? NSNumber {
                // reject non-integral numbers
                let d = n.doubleValue
                guard d == d.rounded(), abs(d) < 9e15 else { return nil }
                out.append(n.intValue)
            } else { return nil }
        }
        return out
    }
}

/// A JSON string literal.
func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}
