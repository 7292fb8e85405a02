import Foundation

/// Appends one JSON object per line (JSONL) to a file: the run's metrics,
/// readable by any plotting tool (`pandas.read_json(path, lines=True)`).
public final class MetricsLog {
    public let path: String
    private let handle: FileHandle

    /// Opens `path` for appending (creating it and its directory). With `step` (a run resumed at
    /// that step), records of later steps are removed first, so the log continues without repeating a step.
    public init(path: String, keepingThrough step: Int? = nil) throws {
        self.path = path
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: path) {
            FileManager.default.createFile(atPath: path, contents: nil)
        } else if let step {
            try Self.truncate(path, keepingThrough: step)
        }
        handle = try FileHandle(forWritingTo: url)
        try handle.seekToEnd()
    }

    deinit { try? handle.close() }

    /// Writes one record; keys sorted so lines diff well.
    public func write(_ record: [String: Any]) throws {
        let data = try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys])
        try handle.write(contentsOf: data + Data("\n".utf8))
    }
}

extension MetricsLog {
    /// Rewrites the log at `path` without the records whose `step` is greater than `step`.
    static func truncate(_ path: String, keepingThrough step: Int) throws {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let kept = text.split(separator: "\n").filter { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let s = object["step"] as? Int else { return true }
            return s <= step
        }
        try (kept.map { $0 + "\n" }.joined()).write(toFile: path, atomically: true, encoding: .utf8)
    }
}
