import XCTest
import ThorTensor
import ThorExperts
import ThorWire

/// Frames whose nested messages need 1- to 4-byte length prefixes (the encoder
/// writes each length before its message; no part may be shifted or lost).
final class LargeFrameTests: XCTestCase {
    func testMultiMegabyteForwardAndReplyRoundTripBitExact() throws {
        var rng = RandomGenerator(seed: 5)
        let rows = [1, 40, 3000, 70_000, 0]   // 64 B, 2.5 KiB, 188 KiB, 4.3 MiB, empty
        let batches = rows.enumerated().map { i, n -> ExpertBatch in
            let t = Tensor(shape: [n, 16])
            rng.fillNormal(t.pointer, count: t.count, std: 1)
            return ExpertBatch(expert: i, tokens: t)
        }
        let payload = rows.reduce(0) { $0 + $1 * 16 * 4 }
        for message in [WireMessage.forward(layer: 1, training: true, batches: batches, replyDType: .f32),
                        .backwardReply(layer: 1, inputGradients: batches)] {
            let frame = WireCodec.encode(Envelope(requestID: 9, sender: "w0", session: 3, message: message))
            XCTAssertGreaterThan(frame.count, payload)
            XCTAssertLessThan(frame.count, payload + 200)
            let back = try frame.withUnsafeBytes { try WireCodec.decode($0) }
            XCTAssertEqual(back.requestID, 9)
            XCTAssertEqual(back.sender, "w0")
            let got: [ExpertBatch]
            switch back.message {
            case .forward(_, _, let b, _): got = b
            case .backwardReply(_, let b): got = b
            default: return XCTFail("got \(back.message.name)")
            }
            XCTAssertEqual(got.map(\.expert), batches.map(\.expert))
            for (a, b) in zip(got, batches) {
                XCTAssertEqual(a.tokens.shape, b.tokens.shape)
                XCTAssertTrue(a.tokens.bitwiseEqual(b.tokens), "expert \(a.expert)")
            }
        }
    }
}
