import Foundation

/// A parsed JSON document, kept as a tree so that configuration readers can
/// report unknown keys and wrong types with their full key path.
public enum JSONValue: Equatable, Sendable, Decodable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else if let o = try? c.decode([String: JSONValue].self) { self = .object(o) }
        else { throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a JSON value") }
    }

    /// Parses UTF-8 JSON text.
    /// A Float as a JSON number with its shortest decimal form (0.7, not 0.699999988).
    public static func number(_ value: Float) -> JSONValue {
        .number(Double(value.description) ?? Double(value))
    }

    public static func parse(_ data: Data) throws -> JSONValue {
        do { return try JSONDecoder().decode(JSONValue.self, from: data) }
        catch { throw ConfigurationError(path: "", message: "the file is not valid JSON (\(error))") }
    }

    /// Parses a flag override value: JSON if it parses (`0.7`, `true`, `null`, `"x"`), else the raw string.
    public static func parseScalar(_ text: String) -> JSONValue {
        if let v = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) { return v }
        return .string(text)
    }

    /// A short name of the value's JSON type, for error messages.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number(let d): return d == d.rounded() ? "an integer" : "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// Serializes with sorted keys and two-space indentation.
    public func serialized(indent: String = "") -> String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let d):
            if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
            return "\(d)"
        case .string(let s):
            var out = "\""
            for ch in s.unicodeScalars {
                switch ch {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\t": out += "\\t"
                default:
                    if ch.value < 0x20 { out += String(format: "\\u%04x", ch.value) } else { out.unicodeScalars.append(ch) }
                }
            }
            return out + "\""
        case .array(let a):
            return "[" + a.map { $0.serialized(indent: indent) }.joined(separator: ", ") + "]"
        case .object(let o):
            if o.isEmpty { return "{}" }
            let inner = indent + "  "
            let body = o.keys.sorted().map { "\(inner)\(JSONValue.string($0).serialized()): \(o[$0]!.serialized(indent: inner))" }
            return "{\n" + body.joined(separator: ",\n") + "\n\(indent)}"
        }
    }
}

/// A configuration problem, naming the key path (`routing.threshold`) and what is allowed.
public struct ConfigurationError: Error, CustomStringConvertible, Equatable {
    /// Dot-separated key path; empty for the whole document.
    public var path: String
    public var message: String
    public init(path: String, message: String) { self.path = path; self.message = message }
    public var description: String { path.isEmpty ? "configuration: \(message)" : "configuration key `\(path)`: \(message)" }
}

/// Reads one JSON object section, checking types and remembering which keys were used,
/// so that `finish()` can reject unknown keys.
struct SectionReader {
    let path: String
    let object: [String: JSONValue]
    let allowed: [String]
    private(set) var used: Set<String> = []

    init(_ value: JSONValue?, path: String, allowed: [String]) throws {
        self.path = path
        self.allowed = allowed
        switch value {
        case nil, .null?: object = [:]
        case .object(let o)?: object = o
        case let v?: throw ConfigurationError(path: path, message: "must be an object, got \(v.typeName)")
        }
        for key in object.keys.sorted() where !allowed.contains(key) {
            throw ConfigurationError(path: full(key),
                message: "unknown key; allowed keys in `\(path.isEmpty ? "(top level)" : path)`: \(allowed.joined(separator: ", "))")
        }
    }

    func full(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func raw(_ key: String) -> JSONValue? {
        if case .null? = object[key] { return nil }
        return object[key]
    }

    func int(_ key: String, default value: Int?) throws -> Int? {
        guard let v = raw(key) else { return value }
        guard case .number(let d) = v, d == d.rounded(), abs(d) < 9e15 else {
            throw ConfigurationError(path: full(key), message: "must be an integer, got \(v.typeName)")
        }
        return Int(d)
    }
    func int(_ key: String, default value: Int) throws -> Int { try int(key, default: Optional(value))! }

    func float(_ key: String, default value: Float?) throws -> Float? {
        guard let v = raw(key) else { return value }
        guard case .number(let d) = v else {
            throw ConfigurationError(path: full(key), message: "must be a number, got \(v.typeName)")
        }
        return Float(d)
    }
    func float(_ key: String, default value: Float) throws -> Float { try float(key, default: Optional(value))! }

    func bool(_ key: String, default value: Bool) throws -> Bool {
        guard let v = raw(key) else { return value }
        guard case .bool(let b) = v else {
            throw ConfigurationError(path: full(key), message: "must be true or false, got \(v.typeName)")
        }
        return b
    }

    func string(_ key: String, default value: String?) throws -> String? {
        guard let v = raw(key) else { return value }
        guard case .string(let s) = v else {
            throw ConfigurationError(path: full(key), message: "must be a string, got \(v.typeName)")
        }
        return s
    }

    func choice<E: RawRepresentable & CaseIterable>(_ key: String, default value: E?) throws -> E? where E.RawValue == String {
        guard let s = try string(key, default: nil) else { return value }
        guard let e = E(rawValue: s) else {
            throw ConfigurationError(path: full(key),
                message: "`\(s)` is not allowed; one of: \(E.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return e
    }
}

/// Helpers for range checks with key paths.
enum Check {
    static func require(_ ok: Bool, _ path: String, _ message: @autoclosure () -> String) throws {
        if !ok { throw ConfigurationError(path: path, message: message()) }
    }
}
