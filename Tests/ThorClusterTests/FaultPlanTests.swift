import XCTest
import Foundation
import ThorTensor
import ThorWire
import ThorTransport
import ThorCluster

/// Fault plan files are parsed strictly (errors name the field), random faults are
/// reproducible from their seed, and a frame the injector damaged cannot be decoded.
final class FaultPlanTests: XCTestCase {
    func plan(_ json: String) throws -> FaultPlan { try FaultPlan(json: Data(json.utf8)) }

    func assertRefused(_ json: String, field: String, _ words: String, line: UInt = #line) {
        XCTAssertThrowsError(try plan(json), line: line) { e in
            guard let p = e as? FaultPlanError else { return XCTFail("\(e)", line: line) }
            XCTAssertEqual(p.field, field, "\(p)", line: line)
            XCTAssertTrue(p.description.contains(words), p.description, line: line)
        }
    }

    func testParsesEveryKind() throws {
        let p = try plan("""
        {"name": "all", "workers": 3, "steps": 8, "faults": [
          {"kind": "kill", "step": 3, "phase": "forward", "worker": "w1"},
          {"kind": "hang", "step": 4, "phase": "backward", "duration_s": 0.5},
          {"kind": "delay", "step": 5, "phase": "step", "layer": 1, "delay_ms": 250},
          {"kind": "drop", "step": 5, "phase": "grad-norm"},
          {"kind": "corrupt", "step": 6},
          {"kind": "partition", "step": 7, "worker": "w2", "duration_s": 2}]}
        """)
        XCTAssertEqual(p.faults.map(\.kind), [.kill, .hang, .delay, .drop, .corrupt, .partition])
        XCTAssertEqual(p.faults[2], FaultSpec(kind: .delay, step: 5, phase: .step, layer: 1, delayMilliseconds: 250))
        XCTAssertEqual(p.faults[4].phase, .forward, "phase defaults to forward")
        XCTAssertEqual(p.faults[1].durationSeconds, 0.5)
        XCTAssertEqual(p.name, "all"); XCTAssertEqual(p.workers, 3); XCTAssertEqual(p.steps, 8)
        XCTAssertTrue(p.faults.allSatisfy { $0.direction == .request }, "message faults hit the request unless told")
    }

    /// `direction: reply` moves a delay, drop or corrupt onto the worker's reply: the injector
    /// lets the request through and tells the coordinator what to do with the reply.
    func testReplyFaultsParseAndActOnTheReply() throws {
        let p = try plan("""
        {"faults": [{"kind": "drop", "step": 2, "phase": "step", "worker": "w0", "direction": "reply"},
                    {"kind": "corrupt", "step": 3, "phase": "backward", "direction": "reply"},
                    {"kind": "delay", "step": 4, "delay_ms": 700, "direction": "reply"},
                    {"kind": "drop", "step": 5, "direction": "request"}]}
        """)
        XCTAssertEqual(p.faults.map(\.direction), [.reply, .reply, .reply, .request])
        XCTAssertEqual(p.faults[0].description, "drop reply w0 at step 2 step")
        let injector = FaultInjector(faults: p.faults, processID: { _ in nil }, partitions: nil)
        func at(_ step: Int, _ phase: FaultPhase) -> FaultAction {
            injector.action(at: FaultPoint(step: step, phase: phase, layer: nil, worker: "w0", operation: "op"))
        }
        XCTAssertEqual(at(2, .step), .dropReply)
        XCTAssertEqual(at(3, .backward), .corruptReply)
        XCTAssertEqual(at(4, .forward), .delayReply(0.7))
        XCTAssertEqual(at(5, .forward), .drop)
        XCTAssertEqual(at(2, .step), .none, "each fault fires once")
        XCTAssertTrue(FaultAction.dropReply.sendsRequest && FaultAction.none.sendsRequest)
        XCTAssertFalse(FaultAction.drop.sendsRequest || FaultAction.corrupt.sendsRequest || FaultAction.delay(1).sendsRequest)
        assertRefused(#"{"faults": [{"kind": "kill", "step": 2, "direction": "reply"}]}"#, field: "faults[0].direction", "acts on the worker")
        assertRefused(#"{"faults": [{"kind": "drop", "step": 2, "direction": "back"}]}"#, field: "faults[0].direction", "must be one of request, reply")
    }

    func testBadPlansAreRefusedNamingTheField() {
        assertRefused(#"{"faults": [{"kind": "explode", "step": 1}]}"#, field: "faults[0].kind", "must be one of kill, hang")
        assertRefused(#"{"faults": [{"kind": "kill"}]}"#, field: "faults[0].step", "is required")
        assertRefused(#"{"faults": [{"kind": "kill", "step": 0}]}"#, field: "faults[0].step", "must be in 1…")
        assertRefused(#"{"faults": [{"kind": "kill", "step": 2.5}]}"#, field: "faults[0].step", "must be an integer")
        assertRefused(#"{"faults": [{"kind": "kill", "step": 2, "phase": "sideways"}]}"#, field: "faults[0].phase", "\"sideways\"")
        assertRefused(#"{"faults": [{"kind": "kill", "step": 2, "wroker": "w1"}]}"#, field: "faults[0].wroker", "unknown field")
        assertRefused(#"{"faults": [{"kind": "drop", "step": 2, "duration_s": 1}]}"#, field: "faults[0].duration_s", "only hang and partition")
        assertRefused(#"{"faults": [{"kind": "kill", "step": 2, "delay_ms": 1}]}"#, field: "faults[0].delay_ms", "only delay")
        assertRefused(#"{"faults": {}}"#, field: "faults", "must be an array")
        assertRefused(#"{"random": {"count": 2, "last_step": 5}}"#, field: "random.seed", "is required")
        assertRefused(#"{"random": {"seed": 1, "first_step": 6, "last_step": 5}}"#, field: "random.last_step", "≥ first_step")
        assertRefused(#"{"random": {"seed": 1, "last_step": 3, "kinds": []}}"#, field: "random.kinds", "non-empty")
        assertRefused(#"{}"#, field: "", "no faults")
        assertRefused(#"{"faults": [], "extra": 1}"#, field: "extra", "unknown field")
        XCTAssertThrowsError(try plan(#"{"faults": [,]}"#)) { e in XCTAssertTrue("\(e)".contains("not valid JSON"), "\(e)") }
        XCTAssertThrowsError(try FaultPlan(contentsOf: "/nonexistent/plan.json")) { e in
            XCTAssertTrue("\(e)".contains("/nonexistent/plan.json"), "\(e)")
        }
    }

    /// The scenario files shipped in cluster/scenarios/ parse.
    func testShippedScenarioFilesParse() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let dir = root.appendingPathComponent("cluster/scenarios").path
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".json") }
        XCTAssertGreaterThanOrEqual(files.count, 8)
        for f in files {
            let p = try FaultPlan(contentsOf: dir + "/" + f)
            XCTAssertEqual(p.name.map { $0 + ".json" }, f)
            XCTAssertFalse(p.resolved(workers: ["w0", "w1", "w2"]).isEmpty, f)
        }
    }

    func testRandomFaultsAreReproducibleFromTheSeed() throws {
        let p = try plan(#"{"random": {"seed": 42, "count": 4, "kinds": ["kill", "hang", "drop"], "first_step": 2, "last_step": 9}}"#)
        let workers = ["w0", "w1", "w2"]
        let a = p.resolved(workers: workers), b = p.resolved(workers: workers)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.count, 4)
        for f in a {
            XCTAssertTrue((2...9).contains(f.step)); XCTAssertTrue(workers.contains(f.worker ?? ""))
            XCTAssertTrue([.forward, .backward, .step].contains(f.phase))
        }
        XCTAssertEqual(a.map(\.step), a.map(\.step).sorted())
        var other = p.random!
        other.seed = 43
        XCTAssertNotEqual(other.draw(workers: workers), a, "another seed, other faults")
    }

    /// Each fault fires once, at the first matching request; worker faults fire whoever the request is for.
    func testInjectorFiresEachFaultOnce() {
        let injector = FaultInjector(faults: [FaultSpec(kind: .drop, step: 2, phase: .forward, worker: "w1"),
                                              FaultSpec(kind: .delay, step: 2, phase: .backward, layer: 1, delayMilliseconds: 50),
                                              FaultSpec(kind: .kill, step: 3, phase: .step, worker: "w2")],
                                     processID: { _ in nil }, partitions: nil)
        var seen: [InjectedFault] = []
        injector.onInjected = { seen.append($0) }
        func at(_ s: Int, _ p: FaultPhase, _ l: Int?, _ w: String) -> FaultAction {
            injector.action(at: FaultPoint(step: s, phase: p, layer: l, worker: w, operation: "op"))
        }
        XCTAssertEqual(at(2, .forward, 0, "w0"), .none)
        XCTAssertEqual(at(2, .forward, 0, "w1"), .drop)
        XCTAssertEqual(at(2, .forward, 1, "w1"), .none, "fired once")
        XCTAssertEqual(at(2, .backward, 0, "w0"), .none)
        XCTAssertEqual(at(2, .backward, 1, "w0"), .delay(0.05))
        XCTAssertEqual(at(3, .step, nil, "w0"), .none)
        XCTAssertEqual(seen.count, 3)
        XCTAssertEqual(seen[2].worker, "w2", "a kill hits its worker at the first request of its step and phase")
        XCTAssertNotNil(seen[2].skipped, "no process to signal")
        XCTAssertTrue(injector.unfired.isEmpty)
    }

    /// A frame damaged by the injector is refused by the decoder, and a worker answers it with
    /// a MALFORMED error and changes nothing.
    func testCorruptedFrameIsRefusedAndChangesNothing() throws {
        let worker = ExpertWorker(options: WorkerOptions(endpoint: "ipc:///nonexistent", workerID: "w9"))
        for message in [WireMessage.step(learningRate: 0.1, clipScale: 1, step: 3), .zeroGradients, .gradNormRequest] {
            let f = WireCodec.encode(Envelope(requestID: 7, sender: "coordinator", session: 5, message: message))
            FaultInjector.corrupt(UnsafeMutableRawBufferPointer(start: f.pointer, count: f.count))
            XCTAssertThrowsError(try f.withUnsafeBytes { try WireCodec.decode($0) })
            let (reply, exit) = worker.handle([Frame(copying: f.bytes)])
            XCTAssertNil(exit)
            let r = try XCTUnwrap(reply).withUnsafeBytes { try WireCodec.decode($0) }
            guard case .error(.malformed, _) = r.message else { return XCTFail("\(r.message)") }
            XCTAssertNil(worker.host, "nothing applied")
        }
    }
}
