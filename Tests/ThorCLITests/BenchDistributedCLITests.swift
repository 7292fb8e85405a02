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
}
