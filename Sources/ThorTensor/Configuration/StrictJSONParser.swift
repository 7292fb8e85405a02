import Foundation

/// A strict RFC 8259 JSON parser for configuration files.
///
/// Foundation's parsers accept trailing commas and keep one of two duplicate keys
/// silently; a configuration file with either is almost always a mistake, so this
/// parser refuses both (a duplicate is named by its key path), as well as comments,
/// single quotes, leading zeros, `NaN`/`Infinity` and anything after the document.
public enum StrictJSONParser {
    public struct SyntaxError: Error, CustomStringConvertible {
        /// Key path of the offending object member, when there is one (duplicate keys).
        public var path: String
        public var line: Int
        public var column: Int
        public var message: String
        public var description: String { "line \(line), column \(column): \(message)" }
    }

    /// Parses one JSON document (UTF-8).
    public static func parse(_ data: Data) throws -> JSONValue {
        var p = Parser(bytes: [UInt8](data))
        p.skipSpace()
        let v = try p.value(path: "", depth: 0)
        p.skipSpace()
        if p.i < p.bytes.count { throw p.error("unexpected \(p.describeNext()) after the JSON document") }
        return v
    }

    struct Parser {
        let bytes: [UInt8]
        var i = 0

        func error(_ message: String, path: String = "") -> SyntaxError {
            var line = 1, column = 1
            for b in bytes[..<min(i, bytes.count)] { if b == 0x0A { line += 1; column = 1 } else if b & 0xC0 != 0x80 { column += 1 } }
            return SyntaxError(path: path, line: line, column: column, message: message)
        }

        func describeNext() -> String {
            guard i < bytes.count else { return "end of file" }
            let b = bytes[i]
            return b >= 0x20 && b < 0x7F ? "`\(Character(UnicodeScalar(b)))`" : String(format: "byte 0x%02x", b)
        }

        mutating func skipSpace() {
            while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 }
        }

        mutating func expect(_ literal: String, _ value: JSONValue) throws -> JSONValue {
            let l = Array(literal.utf8)
            guard i + l.count <= bytes.count, Array(bytes[i..<i + l.count]) == l else { throw error("unexpected \(describeNext())") }
            i += l.count
            return value
        }

        mutating func value(path: String, depth: Int) throws -> JSONValue {
            guard depth < 512 else { throw error("nested more than 512 levels deep") }
            guard i < bytes.count else { throw error("unexpected end of file, expected a value") }
            switch bytes[i] {
            case UInt8(ascii: "{"): return try object(path: path, depth: depth)
            case UInt8(ascii: "["): return try array(path: path, depth: depth)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): return try expect("true", .bool(true))
            case UInt8(ascii: "f"): return try expect("false", .bool(false))
            case UInt8(ascii: "n"): return try expect("null", .null)
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
            default: throw error("unexpected \(describeNext()), expected a value")
            }
        }

        mutating func object(path: String, depth: Int) throws -> JSONValue {
            i += 1
            var members: [String: JSONValue] = [:]
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else {
                    if i < bytes.count, bytes[i] == UInt8(ascii: "}") { throw error("trailing comma before `}`") }
                    throw error("unexpected \(describeNext()), expected a key in double quotes")
                }
                let keyStart = i
                let key = try string()
                let keyPath = path.isEmpty ? key : "\(path).\(key)"
                if members[key] != nil {
                    i = keyStart
                    throw error("duplicate key `\(keyPath)`", path: keyPath)
                }
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw error("unexpected \(describeNext()), expected `:`") }
                i += 1
                skipSpace()
                members[key] = try value(path: keyPath, depth: depth + 1)
                skipSpace()
                guard i < bytes.count else { throw error("unexpected end of file, expected `,` or `}`") }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                guard bytes[i] == UInt8(ascii: ",") else { throw error("unexpected \(describeNext()), expected `,` or `}`") }
                i += 1
            }
        }

        mutating func array(path: String, depth: Int) throws -> JSONValue {
            i += 1
            var items: [JSONValue] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            while true {
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") { throw error("trailing comma before `]`") }
                items.append(try value(path: "\(path)[\(items.count)]", depth: depth + 1))
                skipSpace()
                guard i < bytes.count else { throw error("unexpected end of file, expected `,` or `]`") }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                guard bytes[i] == UInt8(ascii: ",") else { throw error("unexpected \(describeNext()), expected `,` or `]`") }
                i += 1
            }
        }

        mutating func hex4() throws -> UInt32 {
            guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<i + 4], as: UTF8.self), radix: 16) else {
                throw error("invalid \\u escape")
            }
            i += 4
            return v
        }

        mutating func string() throws -> String {
            i += 1
            var out: [UInt8] = []
            while true {
                guard i < bytes.count else { throw error("unterminated string") }
                let b = bytes[i]
                if b == UInt8(ascii: "\"") { i += 1; break }
                if b < 0x20 { throw error("control character in a string (escape it)") }
                if b != UInt8(ascii: "\\") { out.append(b); i += 1; continue }
                i += 1
                guard i < bytes.count else { throw error("unterminated string") }
                let e = bytes[i]; i += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if (0xD800..<0xDC00).contains(code) {
                        guard i + 2 <= bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                            throw error("unpaired surrogate in \\u escape")
                        }
                        i += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw error("unpaired surrogate in \\u escape") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let scalar = UnicodeScalar(code) else { throw error("invalid \\u escape") }
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                default: i -= 1; throw error("invalid escape \\\(describeNext().trimmingCharacters(in: CharacterSet(charactersIn: "`")))")
                }
            }
            guard let s = String(validating: out, as: UTF8.self) else { throw error("string is not valid UTF-8") }
            return s
        }

        mutating func number() throws -> JSONValue {
            let start = i
            func digits() -> Int { let s = i; while i < bytes.count, (0x30...0x39).contains(bytes[i]) { i += 1 }; return i - s }
            if bytes[i] == UInt8(ascii: "-") { i += 1 }
            let intStart = i
            let n = digits()
            guard n > 0 else { throw error("invalid number") }
            if n > 1 && bytes[intStart] == UInt8(ascii: "0") { i = intStart; throw error("leading zero in a number") }
            if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
                i += 1
                guard digits() > 0 else { throw error("invalid number: digits expected after `.`") }
            }
            if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
                i += 1
                if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
                guard digits() > 0 else { throw error("invalid number: digits expected in the exponent") }
            }
            let text = String(decoding: bytes[start..<i], as: UTF8.self)
            guard let d = Double(text), d.isFinite else { i = start; throw error("number \(text) is out of range") }
            return .number(d)
        }
    }
}
