/// A tiny protobuf writer, independent of protobuf-c, to build frames the
/// Swift encoder would never produce (negative dims, wrong byte counts…).
import ThorWire

struct ProtobufBytes {
    var bytes: [UInt8] = []

    mutating func varint(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    mutating func tag(_ field: Int, _ wire: Int) { varint(UInt64(field << 3 | wire)) }
    mutating func uint(_ field: Int, _ v: UInt64) { tag(field, 0); varint(v) }
    mutating func int(_ field: Int, _ v: Int64) { tag(field, 0); varint(UInt64(bitPattern: v)) }
    mutating func bytes(_ field: Int, _ b: [UInt8]) { tag(field, 2); varint(UInt64(b.count)); bytes += b }
    mutating func message(_ field: Int, _ m: ProtobufBytes) { bytes(field, m.bytes) }

    /// thor.Tensor with unpacked shape entries.
    /// thor.Tensor { shape, dtype, data (inline: version 2 only), frame }.
    static func tensor(shape: [Int64], dtype: UInt64, data: [UInt8] = [], frame: UInt64 = 0) -> ProtobufBytes {
        var t = ProtobufBytes()
        for d in shape { t.int(1, d) }
        t.uint(2, dtype)
        if !data.isEmpty { t.bytes(3, data) }
        if frame != 0 { t.uint(4, frame) }
        return t
    }

    /// thor.Envelope { version, request id, forward { layer, training, batches [(expert, tensor)] } }.
    static func forwardEnvelope(version: UInt64 = UInt64(thorProtocolVersion), requestID: UInt64, layer: UInt64, training: Bool,
                                batches: [(UInt64, ProtobufBytes)]) -> [UInt8] {
        var f = ProtobufBytes()
        f.uint(1, layer)
        f.uint(2, training ? 1 : 0)
        for (e, t) in batches {
            var b = ProtobufBytes()
            b.uint(1, e)
            b.message(2, t)
            f.message(3, b)
        }
        var env = ProtobufBytes()
        env.uint(1, version)
        env.uint(2, requestID)
        env.message(12, f)
        return env.bytes
    }
}
