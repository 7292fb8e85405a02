import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster

/// Protocol version 3 over real ZeroMQ sockets: tensor bytes travel as their own frames,
/// sent from the tensors without a copy and used in place on arrival.
final class WireFramesTests: XCTestCase {
    final class Witness { let released: () -> Void; init(_ r: @escaping () -> Void) { released = r }; deinit { released() } }

    func pair() throws -> (Socket, Socket) {
        let context = try ZMQContext()
        let router = try Socket(context: context, type: .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try Socket(context: context, type: .dealer)
        try dealer.setRoutingID("w0")
        try dealer.connect(try router.lastEndpoint())
        return (router, dealer)
    }

    func testBorrowedFrameHoldsItsOwnerUntilSentAndArrivesIntact() throws {
        let (router, dealer) = try pair()
        var released = false
        let bytes: [UInt8] = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let storage = MallocedBytes(count: bytes.count)
        bytes.withUnsafeBytes { storage.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        do {
            let witness = Witness { released = true }
            let frame = Frame(borrowing: UnsafeRawBufferPointer(start: storage.pointer, count: storage.count), owner: witness)
            XCTAssertEqual(frame.bytes.baseAddress, UnsafeRawPointer(storage.pointer), "no copy")
            try dealer.send([Frame("head"), frame])
        }
        let got = try XCTUnwrap(router.receive(timeout: 10))
        XCTAssertEqual(got.map(\.count), [2, 4, bytes.count])
        XCTAssertEqual(got[2].array, bytes)
        // libzmq's I/O thread let go of the owner once the bytes were written.
        let deadline = Date().addingTimeInterval(5)
        while !released && Date() < deadline { usleep(1000) }
        XCTAssertTrue(released, "the borrowed frame's owner was never released")
        // A frame dropped unsent releases its owner too.
        var droppedReleased = false
        do { _ = Frame(borrowing: UnsafeRawBufferPointer(start: storage.pointer, count: 8), owner: Witness { droppedReleased = true }) }
        XCTAssertTrue(droppedReleased)
    }

    func testTensorsCrossTheWireBitExactAndAreUsedInPlace() throws {
        let (router, dealer) = try pair()
        var rng = RandomGenerator(seed: 11)
        let batches = [300, 0, 4000, 1].enumerated().map { e, n -> ExpertBatch in
            let t = Tensor(shape: [n, 64])
            rng.fillNormal(t.pointer, count: t.count, std: 1)
            return ExpertBatch(expert: e, tokens: t)
        }
        let encoded = WireCodec.encode(Envelope(requestID: 5, sender: "w0", message: .forwardReply(layer: 1, outputs: batches)))
        XCTAssertEqual(encoded.payloads.count, batches.count)
        try dealer.send(encoded.zmqFrames())
        let frames = try XCTUnwrap(router.receive(timeout: 10))
        XCTAssertEqual(frames.count, 2 + batches.count, "[routing id][envelope][one frame per tensor]")
        let envelope = try WireCodec.decode(frames: frames.dropFirst())
        guard case .forwardReply(1, let got) = envelope.message else { return XCTFail("got \(envelope.message.name)") }
        for (i, (a, b)) in zip(got, batches).enumerated() {
            XCTAssertEqual(a.expert, b.expert)
            XCTAssertTrue(a.tokens.bitwiseEqual(b.tokens), "batch \(i)")
        }
        // The large tensor is the received frame's memory, not a copy.
        let big = frames[4]
        XCTAssertEqual(UnsafeRawPointer(got[2].tokens.pointer), big.bytes.baseAddress)
        // A malformed multipart message (a tensor frame missing) is refused by name.
        try dealer.send(Array(WireCodec.encode(Envelope(requestID: 6, message: .forwardReply(layer: 1, outputs: batches))).zmqFrames().dropLast()))
        let short = try XCTUnwrap(router.receive(timeout: 10))
        XCTAssertThrowsError(try WireCodec.decode(frames: short.dropFirst())) { e in
            XCTAssertEqual((e as? WireError)?.code, .badTensor, "\(e)")
            XCTAssertTrue("\(e)".contains("tensor frame 3 is out of range (the message has 3 tensor frames)"), "\(e)")
        }
    }
}
