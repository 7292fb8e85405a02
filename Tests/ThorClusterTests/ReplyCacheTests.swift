import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// The worker's reply cache (docs/reliability.md, "The reply cache"): sized by the shard count so
/// that C interleaved shards keep their replies, and bounded in bytes.
final class ReplyCacheTests: XCTestCase {
    let spec = ExpertSpec(modelDim: 8, hiddenDim: 16, activation: .gelu, seed: 3)
    let keys = (0..<2).flatMap { l in (0..<2).map { ExpertKey(layer: l, expert: $0) } }

    func batches(_ s: Int, _ l: Int, gradient: Bool = false) -> [ExpertBatch] {
        var rng = RandomGenerator(seed: UInt64(100 * s + 10 * l + (gradient ? 1 : 0)))
        return [5 + s, 3 + l].enumerated().map { e, n in
            let t = Tensor(shape: [n, spec.modelDim])
            rng.fillNormal(t.pointer, count: t.count, std: 1)
            return ExpertBatch(expert: e, tokens: t)
        }
    }

    func tensors(_ e: Envelope) -> [Tensor] {
        switch e.message {
        case .forwardReply(_, let o), .backwardReply(_, let o): return o.map(\.tokens)
        default: XCTFail("expected a forward or backward reply, got \(e.message.name): \(e.message)"); return []
        }
    }

    /// A real worker, C = 3 shards interleaved over 2 layers (12 requests: every forward, then every
    /// backward). A resend of the oldest backward still owed (its reply was lost) after all 12
    /// must be answered from the cache, with the same bits; computed again it would fail
    /// (NO_PENDING_FORWARD: its forward's activations were consumed), which is what a cache of 4
    /// replies did (it kept only the last 4).
    func testResendOfOldestShardReplyIsAnsweredFromTheCache() throws {
        let raw = try RawCoordinator(workerID: "cache", arguments: [])
        defer {
            raw.stop()
            XCTAssertTrue(processIsGone(raw.pid), "worker outlived the test")
        }
        guard case .register = try raw.receive().message else { return XCTFail("expected Register first") }
        guard case .ack = try raw.call(.assign(Assignment(spec: spec, keys: keys))).1.message else { return XCTFail("Assign") }
        func call(_ m: WireMessage, shard: Int, id: UInt64) throws -> Envelope {
            let f = WireCodec.encode(Envelope(requestID: id, sender: "coordinator", session: 5, message: m, shard: Shard(index: shard, count: 3)))
            return try raw.sendRaw(f.zmqFrames())
        }
        var id: UInt64 = 100
        for l in 0..<2 {
            for s in 0..<3 {
                id += 1
                _ = tensors(try call(.forward(layer: l, training: true, batches: batches(s, l), replyDType: nil), shard: s, id: id))
            }
        }
        var first: (message: WireMessage, shard: Int, id: UInt64, dx: [Tensor])? = nil
        for l in [1, 0] {
            for s in 0..<3 {
                id += 1
                let m = WireMessage.backward(layer: l, gradients: batches(s, l, gradient: true), replyDType: nil)
                let dx = tensors(try call(m, shard: s, id: id))
                if first == nil { first = (m, s, id, dx) }
            }
        }
        XCTAssertEqual(id, 112, "12 requests")
        let oldest = try XCTUnwrap(first)
        assertBitwiseEqual(tensors(try call(oldest.message, shard: oldest.shard, id: oldest.id)), oldest.dx,
                           "the resend of the oldest owed backward, answered from the cache")
    }

    func entry(_ session: UInt64, _ shard: Shard?, _ id: UInt64, bytes: Int) -> ReplyCache.Entry {
        ReplyCache.Entry(session: session, shard: shard, id: id, message: .ack, bytes: bytes)
    }

    /// Capacity 4 × C entries, C the largest shard count cached; the byte bound evicts the oldest
    /// replies but keeps the newest of each (session, shard).
    func testCacheIsBoundedInEntriesAndBytes() {
        var c = ReplyCache(maxBytes: 1 << 40)
        for i in 0..<10 { c.store(entry(1, nil, UInt64(i), bytes: 10)) }
        XCTAssertEqual(c.entries.map(\.id), [6, 7, 8, 9], "C = 1: the last 4")
        for i in 10..<30 { c.store(entry(1, Shard(index: i % 3, count: 3), UInt64(i), bytes: 10)) }
        XCTAssertEqual(c.capacity, 12)
        XCTAssertEqual(c.entries.map(\.id), Array(18..<30), "C = 3: the last 12")
        XCTAssertNotNil(c.lookup(session: 1, shard: Shard(index: 0, count: 3), id: 18))
        XCTAssertNil(c.lookup(session: 1, shard: Shard(index: 1, count: 3), id: 18), "another shard's id is not this one")
        XCTAssertNil(c.lookup(session: 2, shard: Shard(index: 0, count: 3), id: 18), "another session's id is not this one")

        var b = ReplyCache(maxBytes: 250)
        b.noteShards(Shard(index: 0, count: 3))
        for i in 0..<6 { b.store(entry(1, Shard(index: i % 3, count: 3), UInt64(i), bytes: 100)) }
        XCTAssertEqual(b.entries.map(\.id), [3, 4, 5], "over 250 bytes: the oldest go, the newest of each shard stays")
        XCTAssertEqual(b.totalBytes, 300, "the newest of each shard is kept even past the bound")
        b.store(entry(1, Shard(index: 0, count: 3), 6, bytes: 50))
        XCTAssertEqual(b.entries.map(\.id), [4, 5, 6])
        XCTAssertLessThanOrEqual(b.totalBytes, 250)
    }
}
