import Foundation
import ThorTensor

/// A one-line progress display on stderr: a bar, step counts, named figures and the ETA.
/// Redraws in place on a terminal; prints a line every `plainEvery` updates otherwise.
struct ProgressBar {
    let total: Int
    let label: String
    private let clock = Stopwatch()
    private let isTerminal = isatty(STDERR_FILENO) != 0
    private var updates = 0
    /// A line is being redrawn in place (a terminal, not yet ended).
    private var lineOpen = false
    var plainEvery: Int

    init(total: Int, label: String, plainEvery: Int = 50) {
        self.total = max(total, 1); self.label = label; self.plainEvery = plainEvery
    }

    /// Shows `done` of `total` with figures like `["loss": "2.31", "tok/s": "5120"]`.
    mutating func update(_ done: Int, _ figures: KeyValuePairs<String, String>) {
        updates += 1
        let rate = Double(done) / max(clock.seconds, 1e-9)
        let eta = done > 0 ? Double(total - done) / rate : 0
        let width = 24
        let filled = min(width, Int(Double(width) * Double(done) / Double(total)))
        let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
        let figs = figures.map { "\($0.key) \($0.value)" }.joined(separator: " │ ")
        let line = "\(label) [\(bar)] \(done)/\(total) │ \(figs) │ ETA \(ProgressBar.format(seconds: eta))"
        if isTerminal {
            FileHandle.standardError.write(Data(("\r\u{1B}[2K" + line).utf8))
            lineOpen = true
            if done >= total { finish() }
        } else if updates % plainEvery == 1 || done >= total || plainEvery == 1 {
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
    }

    /// Ends the line being redrawn, so that other output starts on a fresh line.
    mutating func finish() {
        if lineOpen { FileHandle.standardError.write(Data("\n".utf8)) }
        lineOpen = false
    }

    static func format(seconds: Double) -> String {
        guard seconds.isFinite else { return "--:--" }
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                         : String(format: "%02d:%02d", s / 60, s % 60)
    }
}
