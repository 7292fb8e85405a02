import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster

/// A worker computes only with the OpenBLAS kernels the coordinator names in Assign.
final class BLASCoreAgreementTests: XCTestCase {
    let spec = ExpertSpec(modelDim: 4, hiddenDim: 6, activation: .relu, seed: 1)

    func reply(_ worker: ExpertWorker, _ message: WireMessage) throws -> WireMessage {
        let frame = WireCodec.encode(Envelope(requestID: 5, sender: "coordinator", message: message))
        let (out, exit) = worker.handle([frame.withUnsafeBytes { Frame(copying: $0) }])
        XCTAssertNil(exit)
        let encoded = try XCTUnwrap(out)
        return try encoded.withUnsafeBytes { try WireCodec.decode($0) }.message
    }

    func testWorkerRefusesKernelsItDidNotLoadAndSaysWhy() throws {
        let worker = ExpertWorker(options: WorkerOptions(endpoint: "ipc:///nonexistent", workerID: "w9"))
        let other = BLASCore.same(BLASCore.loaded, "SkylakeX") ? "Haswell" : "SkylakeX"
        let keys = [ExpertKey(layer: 0, expert: 0)]
        guard case .error(let code, let message) = try reply(worker, .assign(Assignment(spec: spec, keys: keys, blasCore: other))) else {
            return XCTFail("an Assign naming \(other) kernels must be refused by a worker that loaded \(BLASCore.loaded)")
        }
        XCTAssertEqual(code, .internal)
        XCTAssertTrue(message.contains("w9") && message.contains(other) && message.contains(BLASCore.loaded), message)
        XCTAssertNil(worker.host, "a refused Assign changes no state")
        // The coordinator's own kernels (the default) and no requirement are accepted.
        guard case .ack = try reply(worker, .assign(Assignment(spec: spec, keys: keys))) else { return XCTFail("own kernels") }
        XCTAssertEqual(worker.host?.keys, keys)
        guard case .ack = try reply(worker, .assign(Assignment(spec: spec, keys: keys, blasCore: ""))) else { return XCTFail("no requirement") }
    }

    func testAssignCarriesTheKernelSetOnTheWire() throws {
        let a = Assignment(spec: spec, keys: [ExpertKey(layer: 1, expert: 2)], blasCore: "SkylakeX")
        let frame = WireCodec.encode(Envelope(requestID: 1, message: .assign(a)))
        guard case .assign(let b) = try frame.withUnsafeBytes({ try WireCodec.decode($0) }).message else { return XCTFail("Assign") }
        XCTAssertEqual(b.blasCore, "SkylakeX")
        XCTAssertEqual(Assignment(spec: spec, keys: []).blasCore, BLASCore.loaded, "default: this process's kernels")
    }
}
