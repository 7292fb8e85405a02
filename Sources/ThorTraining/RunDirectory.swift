import Foundation

/// A save directory holds one run: its config.json, metrics.jsonl and checkpoints.
///
/// `check` decides, before anything is started or written, whether a run may use a directory:
/// a new or empty directory, or one whose run is being continued (`--resume` points into it),
/// or any other directory with `overwrite` (the other run's files are removed when the run opens it).
/// Anything else is refused with a message naming what was found.
public struct RunDirectory {
    public let path: String
    /// This run continues the run already in the directory (its metrics are kept up to the checkpoint's step).
    public let continuing: Bool
    /// Run files of another run, removed by `open`.
    public let replacing: [String]

    /// Files and directories that belong to a run (`checkpoint-*` includes `checkpoint-last`).
    public static func runFiles(in path: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter { $0 == "config.json" || $0 == "metrics.jsonl" || $0.hasPrefix("checkpoint-") }.sorted {
            ($0.hasPrefix("checkpoint-") ? 1 : 0, $0) < ($1.hasPrefix("checkpoint-") ? 1 : 0, $1)
        }
    }

    /// Whether `checkpoint` lies inside `directory` (symbolic links resolved).
    static func contains(_ directory: String, _ checkpoint: String) -> Bool {
        func real(_ p: String) -> String { URL(fileURLWithPath: p).standardizedFileURL.resolvingSymlinksInPath().path }
        let dir = real(directory)
        let parent = real(URL(fileURLWithPath: checkpoint).standardizedFileURL.deletingLastPathComponent().path)
        let target = real(checkpoint)
        return parent == dir || target.hasPrefix(dir + "/")
    }

    /// Decides whether a run may write into `path` (see the type's documentation). Changes nothing.
    public static func check(_ path: String, resume: String?, overwrite: Bool) throws -> RunDirectory {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw TrainingError.runDirectory("--save-dir \(path) is a file, not a directory")
        }
        let found = runFiles(in: path)
        if found.isEmpty { return RunDirectory(path: path, continuing: false, replacing: []) }
        // The run in the directory is the one being continued, not another run: `overwrite` does not apply.
        if let resume, contains(path, resume) { return RunDirectory(path: path, continuing: true, replacing: []) }
        if overwrite { return RunDirectory(path: path, continuing: false, replacing: found) }
        let checkpoints = found.filter { $0.hasPrefix("checkpoint-") && $0 != "checkpoint-last" }
        var what = found.filter { !$0.hasPrefix("checkpoint-") }
        if !checkpoints.isEmpty {
            what.append("\(checkpoints.count) checkpoint\(checkpoints.count == 1 ? "" : "s") (\(checkpoints.prefix(3).joined(separator: ", "))\(checkpoints.count > 3 ? ", …" : ""))")
        }
        throw TrainingError.runDirectory("""
            --save-dir \(path) already holds another run (\(what.joined(separator: ", "))). \
            Continue it with --resume \(path)/checkpoint-last, replace it with --overwrite, or choose another --save-dir.
            """)
    }

    /// Makes the directory this run's: removes the replaced run's files, writes config.json, and
    /// opens metrics.jsonl (continuing a run resumed at `step`: the records after that step are dropped).
    public func open(configuration: ThorConfiguration, resumingAt step: Int?) throws -> MetricsLog {
        let fm = FileManager.default
        for name in replacing { try fm.removeItem(atPath: path + "/" + name) }
        try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
        try configuration.jsonString.write(toFile: path + "/config.json", atomically: true, encoding: .utf8)
        return try MetricsLog(path: path + "/metrics.jsonl", keepingThrough: continuing ? step : nil)
    }
}
