import Foundation

/// A parsed JSON document, kept as a tree so that configuration readers can
/// report unknown keys and wrong types with their full key path.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// A Float as a JSON number with its shortest decimal form (0.7, not 0.699999988).
    public static func number(_ value: Float) -> JSONValue {
        .number(Double(value.description) ?? Double(value))
    }

    /// Parses UTF-8 JSON text strictly (RFC 8259): no trailing commas, no duplicate keys,
    /// no comments; errors name the line and column (see `StrictJSONParser`).
    public static func parse(_ data: Data) throws -> JSONValue {
        do { return try StrictJSONParser.parse(data) }
        catch let e as StrictJSONParser.SyntaxError {
            throw ConfigurationError(path: e.path, message: "the file is not valid JSON: \(e.description)")
        }
    }

    /// Parses a flag override value: JSON if it parses (`0.7`, `true`, `null`, `"x"`), else the raw string.
    public static func parseScalar(_ text: String) -> JSONValue {
        (try? StrictJSONParser.parse(Data(text.utf8))) ?? .string(text)
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

    /// The value as it would appear in a file, shortened, for error messages (`1.5`, `"high"`, `an object`).
    public var brief: String {
        switch self {
        case .null, .bool, .number: return serialized()
        case .string(let s): return s.count <= 40 ? JSONValue.string(s).serialized() : "a string"
        case .array, .object: return typeName
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

/// Range checks with key paths.
public enum Check {
    public static func require(_ ok: Bool, _ path: String, _ message: @autoclosure () -> String) throws {
        if !ok { throw ConfigurationError(path: path, message: message()) }
    }
}
