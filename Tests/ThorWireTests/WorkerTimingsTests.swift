import XCTest
import ThorTensor
import ThorExperts
import ThorWire

/// Worker replies carry the worker's own timings (optional: older peers neither send nor read them).
final class WorkerTimingsTests: XCTestCase {
    func reply(timings: WorkerTimings?) -> Envelope {
        let t = Tensor(shape: [3, 4], values: (0..<12).map { Float($0) * 0.25 })
        return Envelope(requestID: 9, sender: "w0", message: .forwardReply(layer: 1, outputs: [ExpertBatch(expert: 2, tokens: t)]),
                        timings: timings)
    }

    func decode(_ frame: EncodedFrame) throws -> Envelope { try frame.withUnsafeBytes { try WireCodec.decode($0, payloads: frame.payloads) } }

    func assertSameReply(_ e: Envelope, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(e.requestID, 9, file: file, line: line)
        guard case .forwardReply(let layer, let outs) = e.message else { return XCTFail("got \(e.message.name)", file: file, line: line) }
        XCTAssertEqual(layer, 1, file: file, line: line)
        XCTAssertEqual(outs.map(\.expert), [2], file: file, line: line)
        XCTAssertTrue(outs[0].tokens.bitwiseEqual(reply(timings: nil).messageTokens), file: file, line: line)
    }

    func testTimingsRoundTrip() throws {
        let t = WorkerTimings(decode: 0.001, queue: 0.25, compute: 1.5, computeCPU: 2.75, encode: 0.0625)
        let back = try decode(WireCodec.encode(reply(timings: t)))
        XCTAssertEqual(back.timings, t)
        assertSameReply(back)
    }

    /// An older worker sends no timings: the reply decodes as before, with `timings` nil.
    func testReplyWithoutTimingsDecodesUnchanged() throws {
        let plain = WireCodec.encode(reply(timings: nil))
        let back = try decode(plain)
        XCTAssertNil(back.timings)
        assertSameReply(back)
        // And the field costs nothing when absent: the frame is the one an older build packs.
        let timed = WireCodec.encode(reply(timings: WorkerTimings(compute: 1)))
        XCTAssertGreaterThan(timed.count, plain.count)
    }

    /// An older peer ignores the field: protobuf skips unknown fields. Shown by appending a field
    /// this build does not know (number 41, a double) to a frame, as our field 40 looks to it.
    func testUnknownEnvelopeFieldsAreIgnored() throws {
        let frame = WireCodec.encode(reply(timings: nil))
        var bytes = Array(frame.bytes)
        bytes += [0x99, 0x06]  // tag: field 99 (unused; 41 is shared_region since protocol 5), wire type 1 (64-bit)
        withUnsafeBytes(of: (3.5).bitPattern.littleEndian) { bytes += $0 }
        let back = try bytes.withUnsafeBytes { try WireCodec.decode($0, payloads: frame.payloads) }
        XCTAssertNil(back.timings)
        assertSameReply(back)
    }

    /// The worker's encode time is measured while packing the reply that carries it.
    func testMeasuredEncodeIsPatchedIntoTheFrame() throws {
        let t = WorkerTimings(decode: 0.5, queue: 0.25, compute: 0.125, computeCPU: 0.0625)
        let frame = WireCodec.encode(reply(timings: nil), measuringEncodeOf: t)
        let back = try decode(frame)
        let got = try XCTUnwrap(back.timings)
        XCTAssertEqual(got.decode, 0.5)
        XCTAssertEqual(got.queue, 0.25)
        XCTAssertEqual(got.compute, 0.125)
        XCTAssertEqual(got.computeCPU, 0.0625)
        XCTAssertGreaterThan(got.encode, 0)
        XCTAssertLessThan(got.encode, 1, "the placeholder (1 s) must have been replaced by the measured time")
        assertSameReply(back)
        // Zero timings besides encode (a request that took no measurable time) still patch cleanly.
        let zero = try decode(WireCodec.encode(reply(timings: nil), measuringEncodeOf: WorkerTimings()))
        XCTAssertEqual(zero.timings?.compute, 0)
        XCTAssertLessThan(try XCTUnwrap(zero.timings?.encode), 1)
    }
}

private extension Envelope {
    var messageTokens: Tensor {
        if case .forwardReply(_, let outs) = message { return outs[0].tokens }
        return Tensor(shape: [0])
    }
}
