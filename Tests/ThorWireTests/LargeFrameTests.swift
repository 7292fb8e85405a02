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
            let what = message.name
            let frame = WireCodec.encode(Envelope(requestID: 9, sender: "w0", session: 3, message: message))
            XCTAssertEqual(frame.payloads.count, batches.count, what)
            XCTAssertGreaterThan(frame.totalCount, payload, what)
            XCTAssertLessThan(frame.totalCount, payload + 200, what)
            let back: Envelope
            do { back = try WireCodec.decode(frame) } catch {
                XCTFail("\(what): \(error)"); continue  // the other message still runs
            }
            XCTAssertEqual(back.requestID, 9, what)
            XCTAssertEqual(back.sender, "w0", what)
            let got: [ExpertBatch]
            switch back.message {
            case .forward(_, _, let b, _): got = b
            case .backwardReply(_, let b): got = b
            default: XCTFail("\(what): got \(back.message.name)"); continue
            }
            XCTAssertEqual(got.map(\.expert), batches.map(\.expert), what)
            for (a, b) in zip(got, batches) {
                XCTAssertEqual(a.tokens.shape, b.tokens.shape, "\(what) expert \(a.expert)")
                XCTAssertTrue(a.tokens.bitwiseEqual(b.tokens), "\(what) expert \(a.expert)")
            }
        }
    }
}
