import XCTest
import Foundation

/// `thor bench distributed --json` reports the workers' measured compute next to the inferred one.
final class BenchDistributedCLITests: XCTestCase {
    func testReportsMeasuredWorkerTimings() throws {
        let r = try Thor.run(["bench", "distributed", "--json", "--repeats", "1", "--model-dim", "16", "--hidden-dim", "32",
                              "--experts", "4", "--sentences", "2", "--length", "8"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertEqual(json["distributed_bit_identical_f32"] as? Bool, true)
        XCTAssertGreaterThan(json["measured_timed_replies"] as? Int ?? 0, 0, r.stdout)
        XCTAssertGreaterThan(json["measured_worker_compute_ms_sum"] as? Double ?? -1, 0, r.stdout)
        XCTAssertGreaterThanOrEqual(json["measured_worker_compute_ms_sum"] as? Double ?? -1,
                                    json["measured_worker_compute_ms"] as? Double ?? .infinity, "the busiest worker's share ≤ the sum")
        for key in ["measured_worker_decode_ms_sum", "measured_worker_queue_ms_sum", "measured_worker_encode_ms_sum",
                    "measured_worker_compute_cpu_ms_sum", "measured_wire_ms", "inferred_worker_compute_ms",
                    "distributed_tokens_per_s", "in_process_tokens_per_s"] {
            XCTAssertNotNil(json[key], key)
        }
    }

    /// The transport floor: a pass's bytes per worker shipped to echo threads and back with no
    /// compute, next to the step's distributed-minus-in-process gap and the one-copy (memcpy) bound.
    func testReportsTheTransportFloor() throws {
        for transport in ["ipc", "tcp"] {
            let r = try Thor.run(["bench", "distributed", "--json", "--repeats", "1", "--model-dim", "16", "--hidden-dim", "32",
                                  "--experts", "4", "--sentences", "2", "--length", "8", "--transport", transport])
            XCTAssertEqual(r.status, 0, r.stderr)
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
            let best = try XCTUnwrap(json["transport_floor_ms_per_step"] as? Double, r.stdout)
            let median = try XCTUnwrap(json["transport_floor_median_ms_per_step"] as? Double, r.stdout)
            XCTAssertGreaterThan(best, 0, transport)
            XCTAssertLessThan(best, 10_000, "\(transport): a round trip of a few kilobytes")
            XCTAssertGreaterThanOrEqual(median, best, transport)
            XCTAssertGreaterThanOrEqual(json["one_copy_floor_ms_per_step"] as? Double ?? -1, 0, transport)
            XCTAssertNotNil(json["distributed_gap_ms_per_step"] as? Double, transport)
            XCTAssertNotNil(json["transport_floor_over_gap"] as? Double, transport)
        }
    }

    /// Workers run 2 expert threads by default (as `thor train`'s cluster.expert_threads), and the
    /// distributed layer computes the in-process bits whatever the worker threads.
    func testWorkerThreadsDefaultToTwoAndKeepTheBits() throws {
        let tiny = ["bench", "distributed", "--json", "--repeats", "1", "--model-dim", "16", "--hidden-dim", "32",
                    "--experts", "4", "--sentences", "2", "--length", "8"]
        for (extra, threads, local) in [([String](), 2, 2), (["--worker-threads", "1"], 1, 2), (["--worker-threads", "3"], 3, 2),
                                        (["--in-process-threads", "4"], 2, 4)] {
            let r = try Thor.run(tiny + extra)
            XCTAssertEqual(r.status, 0, r.stderr)
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
            XCTAssertEqual(json["worker_threads"] as? Int, threads, "\(extra)")
            XCTAssertEqual(json["in_process_threads"] as? Int, local, "\(extra)")
            XCTAssertEqual(json["distributed_bit_identical_f32"] as? Bool, true, "\(extra)")
        }
        for option in ["--worker-threads", "--in-process-threads"] {
            let bad = try Thor.run(tiny + [option, "0"])
            XCTAssertNotEqual(bad.status, 0)
            XCTAssertTrue(bad.stderr.contains(option), bad.stderr)
        }
    }
}

/// `thor bench train`: the distributed case's workers run --worker-threads expert threads (default 2)
/// and compute the in-process losses bit for bit.
final class BenchTrainCLITests: XCTestCase {
    func testWorkerThreadsKeepTheLossesBitIdentical() throws {
        let tiny = ["bench", "train", "--json", "--repeats", "1", "--sentences", "2", "--length", "4"]
        for (extra, threads) in [([String](), 2), (["--worker-threads", "1"], 1)] {
            let r = try Thor.run(tiny + extra)
            XCTAssertEqual(r.status, 0, r.stderr)
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
            XCTAssertEqual(json["worker_threads"] as? Int, threads, "\(extra)")
            XCTAssertEqual(json["distributed_losses_bit_identical"] as? Bool, true, "\(extra)")
            XCTAssertGreaterThan(json["distributed_ms_per_step"] as? Double ?? 0, 0, r.stdout)
            // Every timed step is listed; the best of them is the reported figure.
            for key in ["in_process", "distributed"] {
                let each = try XCTUnwrap(json["\(key)_ms_per_step_each"] as? [Double], r.stdout)
                XCTAssertEqual(each.count, 1, "--repeats 1")
                XCTAssertEqual(each.min(), json["\(key)_ms_per_step"] as? Double, r.stdout)
                XCTAssertEqual(json["\(key)_ms_per_step_median"] as? Double, each[0], r.stdout)
            }
        }
        let bad = try Thor.run(tiny + ["--worker-threads", "0"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--worker-threads"), bad.stderr)
    }
}
