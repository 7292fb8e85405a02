import ThorWire
import ThorTransport

// Protocol version 3 on ZeroMQ: one message is the Envelope frame followed by its tensor
// frames (docs/protocol.md, "Framing"). Neither direction copies tensor bytes.

extension EncodedFrame {
    /// The ZeroMQ frames of this message: the Envelope frame (taken: libzmq frees it),
    /// then each tensor frame sent in place from the tensor (or bf16 buffer) that holds it.
    public func zmqFrames() -> [Frame] {
        let n = count
        return [Frame(adoptingMalloced: take(), count: n)] + payloads.map { Frame(borrowing: $0.bytes, owner: $0.owner) }
    }
}

extension WireCodec {
    /// Decodes a received message (`frames` without routing ids): the Envelope frame, then
    /// the tensor frames, whose f32 bytes the decoded tensors use in place (they keep the
    /// frames alive).
    public static func decode(frames: ArraySlice<Frame>, maxFrameBytes: Int = defaultMaxFrameBytes,
                              shared: SharedTensorReader? = nil) throws -> Envelope {
        guard let header = frames.first else { throw WireError.malformed("message has no frames") }
        let payloads = frames.dropFirst().map { WirePayload(bytes: $0.bytes, owner: $0) }
        return try withExtendedLifetime(frames) {
            try header.withUnsafeBytes { try decode($0, payloads: payloads, maxFrameBytes: maxFrameBytes, shared: shared) }
        }
    }
}
