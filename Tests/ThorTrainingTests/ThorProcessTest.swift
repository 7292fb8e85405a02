import XCTest
import Foundation
import ThorTensor
import ThorCluster
import ThorCheckpoint
#if canImport(Glibc)
import Glibc
#endif

/// A test that runs the `thor` binary as child processes: output to log files in `scratch`,
/// every child remembered in `children` (the test's tearDown kills and reaps what is left).
protocol ThorProcessTest: AnyObject {
    var scratch: String { get }
    var children: [pid_t] { get set }
}

extension ThorProcessTest {
    /// Starts `thor args…` with stdout and stderr to `log` (read on failure).
    func thor(_ args: [String], log: String) throws -> pid_t {
        let sh = "exec \"$0\" \"$@\" > \(log) 2>&1"
        let pid = try LocalCluster.spawn("/bin/sh", ["-c", sh, try LocalCluster.locateThorBinary()] + args)
        children.append(pid)
        return pid
    }

    /// The exit status (negative: killed by that signal), or nil after `seconds`.
    func wait(_ pid: pid_t, seconds: Double) -> Int32? {
        var status: Int32 = 0
        let end = monotonicSeconds() + seconds
        while monotonicSeconds() < end {
            if waitpid(pid, &status, WNOHANG) == pid {
                children.removeAll { $0 == pid }
                return status & 0x7f == 0 ? (status >> 8) & 0xff : -(status & 0x7f)
            }
            usleep(10_000)
        }
        return nil
    }

    /// The log file `name` in `scratch` ("" if missing).
    func log(_ name: String) -> String { (try? String(contentsOfFile: scratch + "/" + name, encoding: .utf8)) ?? "" }

    /// Every tensor of a checkpoint (coordinator and experts, as bit patterns) and its state.json.
    func contents(_ dir: String) throws -> ([String: [UInt32]], String) {
        var tensors: [String: [UInt32]] = [:]
        let files = ["coordinator.safetensors"] + (try FileManager.default.contentsOfDirectory(atPath: dir + "/experts")).map { "experts/" + $0 }
        for f in files {
            let st = try SafeTensorsFile.read(path: dir + "/" + f)
            for n in st.names { tensors[n] = try st.tensor(n).array.map(\.bitPattern) }
        }
        return (tensors, try String(contentsOfFile: dir + "/state.json", encoding: .utf8))
    }
}
