import Foundation

/// One section of a configuration file (`routing`, `training`, `cluster`, …), declared in the
/// module that uses it.
///
/// A section is a plain `Codable` struct: its key names are written once, in `CodingKeys`, and
/// its defaults once, in `init()`. `read(_:path:)` fills absent keys (and `null`) from `init()`,
/// rejects unknown keys and wrong JSON types with a `ConfigurationError` naming the key path,
/// and `validate(path:)` rejects impossible values the same way. A member that is itself a
/// section is read the same way, recursively.
public protocol ConfigurationSection: Codable, Equatable, Sendable {
    associatedtype CodingKeys: CodingKey & CaseIterable
    /// Every key at its default.
    init()
    /// Checks every value; errors name the key (`\(path).key`) and the allowed range.
    func validate(path: String) throws
}

extension ConfigurationSection {
    /// The keys a file may use in this section.
    public static var keys: [String] { CodingKeys.allCases.map(\.stringValue) }

    /// Reads the section from a parsed value (nil or `null`: every default) without validating it.
    public static func read(_ value: JSONValue?, path: String) throws -> Self {
        let given: [String: JSONValue]
        switch value {
        case nil, .null?: given = [:]
        case .object(let o)?: given = o
        case let v?: throw ConfigurationError(path: path, message: "must be an object, got \(v.typeName)")
        }
        let allowed = keys
        for key in given.keys.sorted() where !allowed.contains(key) {
            throw ConfigurationError(path: ConfigurationDecoder.join(path, key),
                message: "unknown key; allowed keys in `\(path.isEmpty ? "(top level)" : path)`: \(allowed.joined(separator: ", "))")
        }
        guard case .object(var merged) = Self().jsonValue else { fatalError("\(Self.self) encodes to an object") }
        for (key, v) in given {
            if case .null = v { continue }   // null: the default
            merged[key] = v
        }
        return try Self(from: ConfigurationDecoder(value: .object(merged), path: path))
    }

    /// The section as a JSON tree (every key; optional keys that are nil are left out).
    public var jsonValue: JSONValue {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        guard let data = try? e.encode(self), let v = try? StrictJSONParser.parse(data) else {
            fatalError("\(Self.self) does not encode to JSON")
        }
        return v
    }
}

/// Decodes configuration values from a `JSONValue` tree, throwing `ConfigurationError`s that name
/// the key path and what the key must be (`routing.experts: must be an integer, got "eight"`).
struct ConfigurationDecoder: Decoder {
    let value: JSONValue
    let path: String
    var codingPath: [CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    static func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func fail(_ expected: String) -> ConfigurationError {
        ConfigurationError(path: path, message: "must be \(expected), got \(value.brief)")
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let o) = value else { throw fail("an object") }
        return KeyedDecodingContainer(Keyed<Key>(object: o, path: path))
    }

    func unkeyedContainer() throws -> UnkeyedDecodingContainer {
        guard case .array(let a) = value else { throw fail("an array") }
        return Unkeyed(items: a, path: path)
    }

    func singleValueContainer() throws -> SingleValueDecodingContainer { Single(decoder: self) }

    /// Decodes `T` from this value: primitives with checked ranges, choices (String enums) with
    /// their allowed values, sections with their defaults.
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        if let section = T.self as? any ConfigurationSection.Type {
            return try Self.readSection(section, value, path) as! T
        }
        switch T.self {
        case is Bool.Type:
            guard case .bool(let b) = value else { throw fail("true or false") }
            return b as! T
        case is String.Type:
            guard case .string(let s) = value else { throw fail("a string") }
            return s as! T
        case is Double.Type:
            guard case .number(let d) = value else { throw fail("a number") }
            return d as! T
        case is Float.Type:
            guard case .number(let d) = value else { throw fail("a number") }
            guard abs(d) <= Double(Float.greatestFiniteMagnitude) else { throw fail("a number within ±3.4e38") }
            return Float(d) as! T
        case let integer as any FixedWidthInteger.Type:
            return try decodeInteger(integer) as! T
        default:
            do {
                return try T(from: self)
            } catch DecodingError.dataCorrupted {
                // A String enum given a value it does not have.
                if case .string(let s) = value, let choices = Self.choices(T.self) {
                    throw ConfigurationError(path: path, message: "`\(s)` is not allowed; one of: \(choices.joined(separator: ", "))")
                }
                throw fail("a valid value")
            }
        }
    }

    func decodeInteger<I: FixedWidthInteger>(_ type: I.Type) throws -> I {
        guard case .number(let d) = value, d == d.rounded() else { throw fail("an integer") }
        // From 2^53 on a JSON number (a Double) no longer holds every integer exactly.
        let exact = 9_007_199_254_740_991.0
        let lo = max(Double(I.min), -exact), hi = min(Double(I.max), exact)
        guard d >= lo, d <= hi, let i = I(exactly: d) else {
            throw ConfigurationError(path: path, message: "must be an integer in \(I(lo))…\(I(hi)), got \(Self.describe(d))")
        }
        return i
    }

    static func describe(_ d: Double) -> String {
        abs(d) < 1e15 ? String(Int64(d)) : String(format: "%.6g (too large)", d)
    }

    static func readSection<S: ConfigurationSection>(_ s: S.Type, _ value: JSONValue, _ path: String) throws -> S {
        try S.read(value, path: path)
    }

    static func choices(_ t: Any.Type) -> [String]? {
        guard let c = t as? any CaseIterable.Type else { return nil }
        let raw = rawValues(c)
        return raw.isEmpty ? nil : raw
    }
    static func rawValues<C: CaseIterable>(_ c: C.Type) -> [String] {
        C.allCases.compactMap { ($0 as? any RawRepresentable)?.rawValue as? String }
    }

    struct Keyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let object: [String: JSONValue]
        let path: String
        var codingPath: [CodingKey] { [] }
        var allKeys: [Key] { object.keys.compactMap { Key(stringValue: $0) } }
        func contains(_ key: Key) -> Bool { object[key.stringValue] != nil }
        func child(_ key: Key) -> ConfigurationDecoder {
            ConfigurationDecoder(value: object[key.stringValue] ?? .null, path: join(path, key.stringValue))
        }
        func decodeNil(forKey key: Key) throws -> Bool {
            if case .null = object[key.stringValue] ?? .null { return true }
            return false
        }
        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
            let d = child(key)
            if object[key.stringValue] == nil, !(T.self is any ConfigurationSection.Type) {
                throw ConfigurationError(path: d.path, message: "is missing")
            }
            return try d.decode(T.self)
        }
        func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try decode(type as Bool.Type, key) }
        func decode(_ type: String.Type, forKey key: Key) throws -> String { try decode(type as String.Type, key) }
        func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try decode(type as Double.Type, key) }
        func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try decode(type as Float.Type, key) }
        func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try decode(type as Int.Type, key) }
        func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try decode(type as Int8.Type, key) }
        func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try decode(type as Int16.Type, key) }
        func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try decode(type as Int32.Type, key) }
        func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try decode(type as Int64.Type, key) }
        func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try decode(type as UInt.Type, key) }
        func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try decode(type as UInt8.Type, key) }
        func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try decode(type as UInt16.Type, key) }
        func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try decode(type as UInt32.Type, key) }
        func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try decode(type as UInt64.Type, key) }
        private func decode<T: Decodable>(_ type: T.Type, _ key: Key) throws -> T {
            try decode(type, forKey: key) as T
        }
        func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
            try child(key).container(keyedBy: type)
        }
        func nestedUnkeyedContainer(forKey key: Key) throws -> UnkeyedDecodingContainer { try child(key).unkeyedContainer() }
        func superDecoder() throws -> Decoder { ConfigurationDecoder(value: .object(object), path: path) }
        func superDecoder(forKey key: Key) throws -> Decoder { child(key) }
    }

    struct Unkeyed: UnkeyedDecodingContainer {
        let items: [JSONValue]
        let path: String
        var currentIndex = 0
        var codingPath: [CodingKey] { [] }
        var count: Int? { items.count }
        var isAtEnd: Bool { currentIndex >= items.count }
        mutating func next() throws -> ConfigurationDecoder {
            guard !isAtEnd else { throw ConfigurationError(path: path, message: "has too few elements") }
            defer { currentIndex += 1 }
            return ConfigurationDecoder(value: items[currentIndex], path: "\(path)[\(currentIndex)]")
        }
        mutating func decodeNil() throws -> Bool {
            if !isAtEnd, case .null = items[currentIndex] { currentIndex += 1; return true }
            return false
        }
        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decode(type) }
        mutating func decode(_ type: Bool.Type) throws -> Bool { try next().decode(type) }
        mutating func decode(_ type: String.Type) throws -> String { try next().decode(type) }
        mutating func decode(_ type: Double.Type) throws -> Double { try next().decode(type) }
        mutating func decode(_ type: Float.Type) throws -> Float { try next().decode(type) }
        mutating func decode(_ type: Int.Type) throws -> Int { try next().decode(type) }
        mutating func decode(_ type: Int8.Type) throws -> Int8 { try next().decode(type) }
        mutating func decode(_ type: Int16.Type) throws -> Int16 { try next().decode(type) }
        mutating func decode(_ type: Int32.Type) throws -> Int32 { try next().decode(type) }
        mutating func decode(_ type: Int64.Type) throws -> Int64 { try next().decode(type) }
        mutating func decode(_ type: UInt.Type) throws -> UInt { try next().decode(type) }
        mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try next().decode(type) }
        mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try next().decode(type) }
        mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try next().decode(type) }
        mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try next().decode(type) }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
            try next().container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer() throws -> UnkeyedDecodingContainer { try next().unkeyedContainer() }
        mutating func superDecoder() throws -> Decoder { try next() }
    }

    struct Single: SingleValueDecodingContainer {
        let decoder: ConfigurationDecoder
        var codingPath: [CodingKey] { [] }
        func decodeNil() -> Bool { if case .null = decoder.value { return true }; return false }
        func decode<T: Decodable>(_ type: T.Type) throws -> T { try decoder.decode(type) }
        func decode(_ type: Bool.Type) throws -> Bool { try decoder.decode(type) }
        func decode(_ type: String.Type) throws -> String { try decoder.decode(type) }
        func decode(_ type: Double.Type) throws -> Double { try decoder.decode(type) }
        func decode(_ type: Float.Type) throws -> Float { try decoder.decode(type) }
        func decode(_ type: Int.Type) throws -> Int { try decoder.decode(type) }
        func decode(_ type: Int8.Type) throws -> Int8 { try decoder.decode(type) }
        func decode(_ type: Int16.Type) throws -> Int16 { try decoder.decode(type) }
        func decode(_ type: Int32.Type) throws -> Int32 { try decoder.decode(type) }
        func decode(_ type: Int64.Type) throws -> Int64 { try decoder.decode(type) }
        func decode(_ type: UInt.Type) throws -> UInt { try decoder.decode(type) }
        func decode(_ type: UInt8.Type) throws -> UInt8 { try decoder.decode(type) }
        func decode(_ type: UInt16.Type) throws -> UInt16 { try decoder.decode(type) }
        func decode(_ type: UInt32.Type) throws -> UInt32 { try decoder.decode(type) }
        func decode(_ type: UInt64.Type) throws -> UInt64 { try decoder.decode(type) }
    }
}
