import Foundation
import Crypto

/// `manifest.json` of a checkpoint directory: the SHA-256 of every file in it,
///
/// ```
/// {"algorithm": "sha256", "files": {"config.json": "…", "experts/moe-0-expert-0.safetensors": "…", …},
///  "format": "thor-manifest-1"}
/// ```
///
/// written last when the checkpoint is saved and checked before it is read: a changed,
/// missing or unlisted file is refused by name.
public enum CheckpointManifest {
    public static let fileName = "manifest.json"
    public static let format = "thor-manifest-1"

    /// Hashes every regular file under `directory` (except the manifest) and writes the manifest.
    public static func write(directory: String) throws {
        var files: [String: String] = [:]
        for path in try regularFiles(in: directory) where path != fileName {
            files[path] = try sha256(ofFile: directory + "/" + path)
        }
        let object: [String: Any] = ["format": format, "algorithm": "sha256", "files": files]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
        try (data + Data("\n".utf8)).write(to: URL(fileURLWithPath: directory + "/" + fileName), options: .atomic)
    }

    /// Checks every file of `directory` against its manifest.
    /// - Throws: ``SafeTensorsError`` naming the file: no or unreadable manifest, a listed file
    ///   missing, a file whose SHA-256 differs, a file the manifest does not list.
    public static func verify(directory: String) throws {
        let path = directory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SafeTensorsError("\(fileName) is missing: the checkpoint's integrity cannot be checked")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              object["format"] as? String == format, object["algorithm"] as? String == "sha256",
              let files = object["files"] as? [String: String] else {
            throw SafeTensorsError("\(fileName) is not a \(format) SHA-256 manifest")
        }
        let present = Set(try regularFiles(in: directory)).subtracting([fileName])
        for name in present.sorted() where files[name] == nil {
            throw SafeTensorsError("\(name) is not listed in \(fileName) (a file added after the checkpoint was written)")
        }
        for (name, expected) in files.sorted(by: { $0.key < $1.key }) {
            guard present.contains(name) else { throw SafeTensorsError("\(name) is listed in \(fileName) but missing") }
            let actual = try sha256(ofFile: directory + "/" + name)
            guard actual == expected.lowercased() else {
                throw SafeTensorsError("\(name) is corrupt: its SHA-256 is \(actual), the manifest says \(expected)")
            }
        }
    }

    /// SHA-256 of a file's bytes (hex), read in 1 MiB chunks.
    public static func sha256(ofFile path: String) throws -> String {
        guard let f = fopen(path, "rb") else { throw SafeTensorsError("\(path): cannot read (\(String(cString: strerror(errno))))") }
        defer { fclose(f) }
        var hasher = SHA256()
        let chunk = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { chunk.deallocate() }
        while true {
            let n = fread(chunk, 1, 1 << 20, f)
            if n > 0 { hasher.update(bufferPointer: UnsafeRawBufferPointer(start: chunk, count: n)) }
            if n < 1 << 20 {
                guard ferror(f) == 0 else { throw SafeTensorsError("\(path): read error") }
                break
            }
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// Paths (relative, `/`-separated, sorted) of the regular files under `directory`.
    static func regularFiles(in given: String) throws -> [String] {
        let fm = FileManager.default
        // The enumerator does not descend into a symlink (`checkpoint-last`): list its target.
        let directory = URL(fileURLWithPath: given).resolvingSymlinksInPath().path
        guard let e = fm.enumerator(atPath: directory) else { throw SafeTensorsError("\(directory): cannot list") }
        var out: [String] = []
        while let rel = e.nextObject() as? String {
            var isDir: ObjCBool = false
            if fm.fileExists(atPath: directory + "/" + rel, isDirectory: &isDir), !isDir.boolValue { out.append(rel) }
        }
        return out.sorted()
    }
}
