import XCTest
import ThorTensor
import ThorExperts
#if canImport(Glibc)
import Glibc
#endif

/// Process ids whose parent is this test process (zombies included), from /proc.
func childProcesses() -> [pid_t] {
    guard let dir = opendir("/proc") else { return [] }
    defer { closedir(dir) }
    var result: [pid_t] = []
    let me = getpid()
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        guard let pid = pid_t(name) else { continue }
        let fd = open("/proc/\(pid)/stat", O_RDONLY)
        guard fd >= 0 else { continue }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = read(fd, &buffer, buffer.count)
        close(fd)
        guard n > 0 else { continue }
        let stat = String(decoding: buffer[0..<n], as: UTF8.self)
        // pid (comm) state ppid …; comm may contain spaces, so parse after the last ')'.
        guard let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        if fields.count > 1, pid_t(fields[1]) == me { result.append(pid) }
    }
    return result
}

/// True when no process with this id exists (reaped, not a zombie).
func processIsGone(_ pid: pid_t) -> Bool {
    kill(pid, 0) == -1 && errno == ESRCH
}

/// Random batches for one MoE layer: a random subset of `experts` in random order
/// (some experts get no tokens), 0…6 rows each (zero-row batches included).
func randomBatches(experts: Int, modelDim: Int, rng: inout RandomGenerator) -> [ExpertBatch] {
    var ids = (0..<experts).filter { _ in rng.nextInt(below: 3) != 0 }
    if ids.isEmpty { ids = [rng.nextInt(below: experts)] }
    ids.shuffle(using: &rng)
    return ids.map { e in
        let t = Tensor(shape: [rng.nextInt(below: 7), modelDim])
        rng.fillUniform(t.pointer, count: t.count, limit: 1)
        return ExpertBatch(expert: e, tokens: t)
    }
}

func assertBitwiseEqual(_ a: [Tensor], _ b: [Tensor], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, what, file: file, line: line)
    for (i, (x, y)) in zip(a, b).enumerated() {
        XCTAssertTrue(x.bitwiseEqual(y), "\(what) tensor \(i): \(x.shape) vs \(y.shape) differ", file: file, line: line)
    }
}

func assertSameState(_ a: [ExpertKey: [String: Tensor]], _ b: [ExpertKey: [String: Tensor]], _ what: String,
                     file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(Set(a.keys), Set(b.keys), what, file: file, line: line)
    for (k, tensors) in a {
        XCTAssertEqual(Set(tensors.keys), Set(b[k]?.keys ?? [:].keys), "\(what) \(k)", file: file, line: line)
        for (name, t) in tensors {
            XCTAssertTrue(b[k]?[name]?.bitwiseEqual(t) ?? false, "\(what): \(name) differs", file: file, line: line)
        }
    }
}

/// The exit status of `pid` once it exits within `seconds` (negative: killed by that signal;
/// nil: still running, then killed and reaped).
func exitStatus(_ pid: pid_t, within seconds: Double) -> Int32? {
    var status: Int32 = 0
    let end = MonotonicClock.seconds() + seconds
    while MonotonicClock.seconds() < end {
        if waitpid(pid, &status, WNOHANG) == pid { return status & 0x7f == 0 ? (status >> 8) & 0xff : -(status & 0x7f) }
        usleep(10_000)
    }
    kill(pid, SIGKILL)
    waitpid(pid, &status, 0)
    return nil
}
