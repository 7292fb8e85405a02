import Foundation

/// Appends one JSON object per line (JSONL) to a file: the run's metrics,
/// readable by any plotting tool (`pandas.read_json(path, lines=True)`).
public final class MetricsLog {
    public let path: String
    private let handle: FileHandle

    /// Opens `path` for appending (creating it and its directory).
    public init(path: String) throws {
        self.path = path
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: path) {
            FileManager.default.createFile(atPath: path, contents: nil)
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

/// A one-line progress display on stderr: a bar, step counts, named figures and the ETA.
/// Redraws in place on a terminal; prints a line every `plainEvery` updates otherwise.
public struct ProgressBar {
    public let total: Int
    public let label: String
    private let start = Date()
    private let isTerminal = isatty(STDERR_FILENO) != 0
    private var updates = 0
    public var plainEvery: Int

    public init(total: Int, label: String, plainEvery: Int = 50) {
        self.total = max(total, 1); self.label = label; self.plainEvery = plainEvery
    }

    /// Shows `done` of `total` with figures like `["loss": "2.31", "tok/s": "5120"]`.
    public mutating func update(_ done: Int, _ figures: KeyValuePairs<String, String>) {
        updates += 1
        let elapsed = Date().timeIntervalSince(start)
        let rate = Double(done) / max(elapsed, 1e-9)
        let eta = done > 0 ? Double(total - done) / rate : 0
        let width = 24
        let filled = min(width, Int(Double(width) * Double(done) / Double(total)))
        let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
        let figs = figures.map { "\($0.key) \($0.value)" }.joined(separator: " │ ")
        let line = "\(label) [\(bar)] \(done)/\(total) │ \(figs) │ ETA \(ProgressBar.format(seconds: eta))"
        if isTerminal {
            FileHandle.standardError.write(Data(("\r\u{1B}[2K" + line).utf8))
            if done >= total { FileHandle.standardError.write(Data("\n".utf8)) }
        } else if updates % plainEvery == 1 || done >= total || plainEvery == 1 {
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
    }

    /// Ends the line on a terminal so later output starts fresh.
    public func finish() {
        if isTerminal { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    static func format(seconds: Double) -> String {
        guard seconds.isFinite else { return "--:--" }
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                         : String(format: "%02d:%02d", s / 60, s % 60)
    }
}
