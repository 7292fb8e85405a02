import ThorTransport
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// CURVE key files (`thor keys generate --out PREFIX`): `PREFIX.pub` holds the public key,
/// `PREFIX.key` the secret key, each as one line of 40 Z85 characters after a `#` comment.
/// A secret key file must be readable by its owner only (mode 0600 or 0400).
public enum KeyFiles {
    static let publicHeader = "# thor CURVE public key: give it to the coordinator's --allowed-keys (workers) or to workers' --server-public-key (coordinator)"
    static let secretHeader = "# thor CURVE secret key: keep it private (mode 0600); never copy it to another machine"

    /// Writes `pair` to `PREFIX.pub` (mode 0644) and `PREFIX.key` (mode 0600). Refuses
    /// when either exists unless `force`; returns the two paths.
    @discardableResult
    public static func write(_ pair: CurveKeyPair, prefix: String, force: Bool = false) throws -> (publicFile: String, secretFile: String) {
        let pub = prefix + ".pub", sec = prefix + ".key"
        if !force {
            for p in [pub, sec] where access(p, F_OK) == 0 {
                throw KeyFileError(path: p, reason: "already exists; give --force to replace it (workers and coordinators using the old key will be refused)")
            }
        }
        try writeFile(sec, secretHeader + "\n" + pair.secretKey + "\n", mode: 0o600)
        try writeFile(pub, publicHeader + "\n" + pair.publicKey + "\n", mode: 0o644)
        return (pub, sec)
    }

    /// The key pair of a secret key file; refuses a file others may read.
    public static func readSecret(_ path: String) throws -> CurveKeyPair {
        var st = stat()
        guard stat(path, &st) == 0 else { throw KeyFileError(path: path, reason: "cannot read it: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw KeyFileError(path: path, reason: "is not a regular file") }
        let mode = st.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw KeyFileError(path: path, reason: "secret key file is readable or writable by group or others (mode 0\(String(mode, radix: 8))); run `chmod 600 \(path)`")
        }
        let (text, lines) = try keyLines(path)
        if text.hasPrefix(publicHeader) {
            throw KeyFileError(path: path, reason: "is a public key file; give the secret key file (PREFIX.key)")
        }
        guard lines.count == 1 else {
            throw KeyFileError(path: path, reason: lines.isEmpty ? "holds no key" : "holds \(lines.count) keys; a secret key file holds one")
        }
        do { return try CurveKeyPair(secretKey: lines[0].text) } catch {
            throw KeyFileError(path: path, reason: "line \(lines[0].number): \(error)")
        }
    }

    /// The public key in a public key file (`PREFIX.pub`).
    public static func readPublic(_ path: String) throws -> String {
        let (text, lines) = try keyLines(path)
        if text.hasPrefix(secretHeader) {
            throw KeyFileError(path: path, reason: "is a secret key file; give the public key file (PREFIX.pub)")
        }
        guard lines.count == 1 else {
            throw KeyFileError(path: path, reason: lines.isEmpty ? "holds no key" : "holds \(lines.count) keys; a public key file holds one")
        }
        do { try CurveKey.validate(lines[0].text) } catch { throw KeyFileError(path: path, reason: "line \(lines[0].number): \(error)") }
        return lines[0].text
    }

    /// The allowed public keys: every `*.pub` file of a directory, or the keys of one file
    /// (one per line). Returns key → where it came from (`file` or `file:line`).
    public static func readAllowed(_ path: String) throws -> [String: String] {
        var st = stat()
        guard stat(path, &st) == 0 else { throw KeyFileError(path: path, reason: "cannot read it: \(String(cString: strerror(errno)))") }
        var files: [String] = []
        if (st.st_mode & S_IFMT) == S_IFDIR {
            guard let dir = opendir(path) else { throw KeyFileError(path: path, reason: "cannot list it: \(String(cString: strerror(errno)))") }
            defer { closedir(dir) }
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name.hasSuffix(".pub") { files.append(path + "/" + name) }
            }
            files.sort()
            guard !files.isEmpty else { throw KeyFileError(path: path, reason: "holds no *.pub public key files") }
        } else {
            files = [path]
        }
        var allowed: [String: String] = [:]
        for file in files {
            let (text, lines) = try keyLines(file)
            if text.hasPrefix(secretHeader) {
                throw KeyFileError(path: file, reason: "is a secret key file; the allowed set holds workers' public keys (PREFIX.pub)")
            }
            guard !lines.isEmpty else { throw KeyFileError(path: file, reason: "holds no key") }
            for l in lines {
                do { try CurveKey.validate(l.text) } catch { throw KeyFileError(path: file, reason: "line \(l.number): \(error)") }
                allowed[l.text] = lines.count == 1 ? file : "\(file):\(l.number)"
            }
        }
        return allowed
    }

    /// The file's text and its key lines (not blank, not `#` comments), trimmed, with line numbers.
    static func keyLines(_ path: String) throws -> (String, [(number: Int, text: String)]) {
        guard let f = fopen(path, "r") else { throw KeyFileError(path: path, reason: "cannot read it: \(String(cString: strerror(errno)))") }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n > 0 { bytes += buffer[0..<n] }
            if n < buffer.count { break }
            guard bytes.count <= 1 << 20 else { throw KeyFileError(path: path, reason: "is larger than 1 MiB; not a key file") }
        }
        if ferror(f) != 0 { throw KeyFileError(path: path, reason: "cannot read it: \(String(cString: strerror(errno)))") }
        let text = String(decoding: bytes, as: UTF8.self)
        var lines: [(Int, String)] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let t = raw.trimmingWhitespace()
            if t.isEmpty || t.hasPrefix("#") { continue }
            lines.append((i + 1, t))
        }
        return (text, lines)
    }

    static func writeFile(_ path: String, _ text: String, mode: mode_t) throws {
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard fd >= 0 else { throw KeyFileError(path: path, reason: "cannot create it: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        fchmod(fd, mode)  // regardless of the umask
        let bytes = Array(text.utf8)
        guard Glibc.write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else {
            throw KeyFileError(path: path, reason: "cannot write it: \(String(cString: strerror(errno)))")
        }
    }
}

/// A key file that cannot be used, and why.
public struct KeyFileError: Error, CustomStringConvertible, Equatable {
    public var path: String
    public var reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var description: String { "key file \(path): \(reason)" }
}

extension Substring {
    func trimmingWhitespace() -> String {
        var s = self
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return String(s)
    }
}
