import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A byte string that is not valid text in the named character set, or a character set
/// the system's iconv does not know.
public struct TextDecodingError: Error, CustomStringConvertible, Equatable {
    public var charset: String
    public var reason: String
    public var description: String { "charset \(charset): \(reason)" }
}

/// Decodes bytes in a named character set (as written in a gettext header: `UTF-8`,
/// `ISO-8859-2`, `cp1251`, `CP936`, ...) to a Swift string, through the C library's iconv.
/// UTF-8 and ASCII are decoded directly (strictly: invalid UTF-8 is an error, never replaced).
public enum TextDecoding {
    /// The canonical spelling used for comparisons: upper case, no surrounding spaces.
    static func canonical(_ charset: String) -> String {
        charset.trimmingCharacters(in: .whitespaces).uppercased()
    }

    /// True for the names of UTF-8 (and of its ASCII subset, which decodes the same way).
    public static func isUTF8(_ charset: String) -> Bool {
        ["UTF-8", "UTF8", "ASCII", "US-ASCII", "ANSI_X3.4-1968", ""].contains(canonical(charset))
    }

    /// Decodes `bytes` from `charset` to a string.
    /// - Throws: ``TextDecodingError`` for an unknown charset or bytes invalid in it.
    public static func decode<C: Collection>(_ bytes: C, charset: String) throws -> String where C.Element == UInt8 {
        if isUTF8(charset) {
            guard let s = String(validating: Array(bytes), as: UTF8.self) else {
                throw TextDecodingError(charset: charset, reason: "invalid UTF-8")
            }
            return s
        }
        return try iconvDecode(Array(bytes), charset: charset)
    }

    private static func iconvDecode(_ input: [UInt8], charset: String) throws -> String {
        let cd = iconv_open("UTF-8", charset.trimmingCharacters(in: .whitespaces))
        guard let cd, cd != iconv_t(bitPattern: -1) else {
            throw TextDecodingError(charset: charset, reason: "not known to iconv")
        }
        defer { iconv_close(cd) }
        if input.isEmpty { return "" }
        // UTF-8 needs at most 4 bytes per input byte for the single- and double-byte sets used here.
        var output = [UInt8](repeating: 0, count: input.count * 4 + 16)
        var source = input
        let produced: Int = try source.withUnsafeMutableBufferPointer { src in
            try output.withUnsafeMutableBufferPointer { dst in
                var inPtr: UnsafeMutablePointer<CChar>? = UnsafeMutableRawPointer(src.baseAddress!)
                    .assumingMemoryBound(to: CChar.self)
                var outPtr: UnsafeMutablePointer<CChar>? = UnsafeMutableRawPointer(dst.baseAddress!)
                    .assumingMemoryBound(to: CChar.self)
                var inLeft = src.count
                var outLeft = dst.count
                let r = iconv(cd, &inPtr, &inLeft, &outPtr, &outLeft)
                if r == -1 || inLeft != 0 {
                    throw TextDecodingError(charset: charset,
                                            reason: "invalid or incomplete byte sequence at byte \(src.count - inLeft)")
                }
                return dst.count - outLeft
            }
        }
        guard let s = String(validating: output[0..<produced], as: UTF8.self) else {
            throw TextDecodingError(charset: charset, reason: "iconv produced invalid UTF-8")
        }
        return s
    }
}
