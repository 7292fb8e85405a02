import Foundation

/// One sentence pair with its task label (a domain such as `law`, or a language such as `de`).
public struct TranslationPair: Sendable, Equatable, Hashable {
    /// The task label (domain or language), e.g. `"it"`.
    public var task: String
    /// Source sentence.
    public var source: String
    /// Target sentence.
    public var target: String

    public init(task: String, source: String, target: String) {
        self.task = task; self.source = source; self.target = target
    }
}

/// A problem in a corpus file, with the file name and 1-based line number.
public struct CorpusFileError: Error, CustomStringConvertible, Equatable {
    /// The file that was read or written.
    public var path: String
    /// 1-based line number (0 when the problem concerns the whole file).
    public var line: Int
    /// What is wrong.
    public var reason: String

    public init(path: String, line: Int, reason: String) {
        self.path = path; self.line = line; self.reason = reason
    }

    public var description: String {
        line > 0 ? "\(path):\(line): \(reason)" : "\(path): \(reason)"
    }
}

/// The corpus file format: UTF-8 plain text, one pair per line,
///
///     task<TAB>source<TAB>target
///
/// exactly three tab-separated fields, none empty; no tabs or newlines inside a
/// field; lines end in `\n` (a trailing `\r` is removed, so CRLF files read too).
/// Blank lines are an error, except that the file may end with a newline.
/// No quoting or escaping: a field may hold any other character.
public enum CorpusFile {
    /// Reads pairs from `path`. With `tasks`, a task label not in the list is an error.
    /// - Throws: ``CorpusFileError`` naming the file and the line for a missing file,
    ///   invalid UTF-8, a wrong number of fields, an empty field or an unknown task.
    public static func read(path: String, tasks: [String]? = nil) throws -> [TranslationPair] {
        let data: Data
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CorpusFileError(path: path, line: 0, reason: "no such file")
        }
        guard !isDirectory.boolValue else {
            throw CorpusFileError(path: path, line: 0, reason: "is a directory, not a corpus file (give the path of a task<TAB>source<TAB>target file)")
        }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw CorpusFileError(path: path, line: 0, reason: "permission denied (the file is not readable)")
        }
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw CorpusFileError(path: path, line: 0, reason: "cannot read the file (\(String(cString: strerror(errno))))")
        }
        return try parse(data, path: path, tasks: tasks)
    }

    /// Parses the bytes of a corpus file; `path` is used in error messages.
    public static func parse(_ data: Data, path: String = "<corpus>", tasks: [String]? = nil) throws -> [TranslationPair] {
        let known = tasks.map(Set.init)
        var pairs: [TranslationPair] = []
        var lineNumber = 0
        var start = data.startIndex
        while start < data.endIndex {
            let end = data[start...].firstIndex(of: 0x0A) ?? data.endIndex
            lineNumber += 1
            var lineEnd = end
            if lineEnd > start && data[data.index(before: lineEnd)] == 0x0D { lineEnd = data.index(before: lineEnd) }
            guard let line = String(validating: data[start..<lineEnd], as: UTF8.self) else {
                throw CorpusFileError(path: path, line: lineNumber, reason: "not valid UTF-8")
            }
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard fields.count == 3 else {
                throw CorpusFileError(path: path, line: lineNumber,
                                      reason: "expected 3 tab-separated fields (task, source, target), found \(fields.count)")
            }
            let names = ["task", "source", "target"]
            for (i, f) in fields.enumerated() where f.allSatisfy({ $0 == " " }) {
                throw CorpusFileError(path: path, line: lineNumber, reason: "the \(names[i]) field is empty")
            }
            let task = String(fields[0])
            if let known, !known.contains(task) {
                throw CorpusFileError(path: path, line: lineNumber,
                                      reason: "unknown task '\(task)' (known: \(tasks!.joined(separator: ", ")))")
            }
            pairs.append(TranslationPair(task: task, source: String(fields[1]), target: String(fields[2])))
            start = end < data.endIndex ? data.index(after: end) : end
        }
        return pairs
    }

    /// The file contents for `pairs`.
    /// - Throws: ``CorpusFileError`` (line = index + 1) for a field that is empty or holds a tab or newline.
    public static func serialize(_ pairs: [TranslationPair], path: String = "<corpus>") throws -> Data {
        var out = ""
        for (i, p) in pairs.enumerated() {
            for (name, f) in [("task", p.task), ("source", p.source), ("target", p.target)] {
                if f.isEmpty || f.allSatisfy({ $0 == " " }) {
                    throw CorpusFileError(path: path, line: i + 1, reason: "the \(name) field is empty")
                }
                if f.unicodeScalars.contains(where: { $0 == "\t" || $0 == "\n" || $0 == "\r" }) {
                    throw CorpusFileError(path: path, line: i + 1, reason: "the \(name) field holds a tab or line break")
                }
            }
            out += "\(p.task)\t\(p.source)\t\(p.target)\n"
        }
        return Data(out.utf8)
    }

    /// Writes `pairs` to `path` atomically (temporary file, then rename).
    public static func write(_ pairs: [TranslationPair], to path: String) throws {
        let data = try serialize(pairs, path: path)
        do { try data.write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
            throw CorpusFileError(path: path, line: 0, reason: "cannot write the file (\(error.localizedDescription))")
        }
    }
}
