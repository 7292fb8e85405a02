import CZMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A CURVE key pair (Curve25519, as libzmq's CURVE mechanism uses it), both keys as
/// 40-character Z85 text (the ZeroMQ guide's Ironhouse pattern: every peer has one).
public struct CurveKeyPair: Sendable, Equatable {
    /// The public key (Z85, 40 characters): given to peers.
    public let publicKey: String
    /// The secret key (Z85, 40 characters): never leaves its owner.
    public let secretKey: String

    /// A fresh random key pair (libzmq's `zmq_curve_keypair`, from libsodium).
    public static func generate() throws -> CurveKeyPair {
        guard ZMQContext.has("curve") else { throw CurveKeyError.unsupported }
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw ZMQError.last("zmq_curve_keypair") }
        return CurveKeyPair(publicKey: String(cString: pub), secretKey: String(cString: sec))
    }

    /// The pair of a secret key: the public key is derived from it (`zmq_curve_public`).
    public init(secretKey: String) throws {
        try CurveKey.validate(secretKey)
        guard ZMQContext.has("curve") else { throw CurveKeyError.unsupported }
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, secretKey) == 0 else { throw ZMQError.last("zmq_curve_public") }
        self.publicKey = String(cString: pub)
        self.secretKey = secretKey
    }

    private init(publicKey: String, secretKey: String) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }
}

/// Z85 text of a 32-byte CURVE key.
public enum CurveKey {
    /// Z85's alphabet (ZeroMQ RFC 32).
    static let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#".utf8)

    /// Throws ``CurveKeyError/malformed(_:)`` unless `key` is 40 characters of Z85.
    public static func validate(_ key: String) throws {
        let bytes = Array(key.utf8)
        guard bytes.count == 40 else {
            throw CurveKeyError.malformed("a CURVE key is 40 characters of Z85 text, got \(bytes.count) characters")
        }
        if let bad = bytes.first(where: { !alphabet.contains($0) }) {
            throw CurveKeyError.malformed("character '\(Character(Unicode.Scalar(bad)))' is not Z85")
        }
        // The 32 bytes fit 40 characters only if each 5-character group is below 2^32.
        for g in 0..<8 {
            var v: UInt64 = 0
            for c in bytes[(g * 5)..<(g * 5 + 5)] { v = v * 85 + UInt64(alphabet.firstIndex(of: c)!) }
            guard v <= UInt64(UInt32.max) else { throw CurveKeyError.malformed("group \(g + 1) of 8 is out of Z85 range") }
        }
    }

    /// The 40-character Z85 text of 32 raw key bytes (e.g. the credentials of a ZAP request).
    public static func z85(_ raw: [UInt8]) -> String? {
        guard raw.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        guard raw.withUnsafeBufferPointer({ zmq_z85_encode(&out, $0.baseAddress, 32) }) != nil else { return nil }
        return String(cString: out)
    }
}

/// A key that cannot be used.
public enum CurveKeyError: Error, CustomStringConvertible, Equatable {
    case malformed(String)
    case unsupported

    public var description: String {
        switch self {
        case .malformed(let why): return "malformed CURVE key: \(why)"
        case .unsupported: return "this libzmq was built without CURVE (zmq_has(\"curve\") is false)"
        }
    }
}

extension Socket {
    /// Makes this socket a CURVE server with `secretKey` (set before `bind`): every
    /// connection is encrypted, and clients are authenticated by the ZAP handler of the
    /// socket's context in `domain` (see ``ZAPHandler``; without a handler libzmq accepts any client key).
    public func makeCurveServer(secretKey: String, domain: String = "thor") throws {
        try CurveKey.validate(secretKey)
        try setOption(ZMQ_CURVE_SERVER, Int32(1), name: "ZMQ_CURVE_SERVER")
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(secretKey.utf8), name: "ZMQ_CURVE_SECRETKEY")
        try setOption(ZMQ_ZAP_DOMAIN, bytes: Array(domain.utf8), name: "ZMQ_ZAP_DOMAIN")
    }

    /// Makes this socket a CURVE client with its own key pair, talking only to the
    /// server holding `serverPublicKey`'s secret (set before `connect`).
    public func makeCurveClient(keyPair: CurveKeyPair, serverPublicKey: String) throws {
        try CurveKey.validate(serverPublicKey)
        try setOption(ZMQ_CURVE_SERVERKEY, bytes: Array(serverPublicKey.utf8), name: "ZMQ_CURVE_SERVERKEY")
        try setOption(ZMQ_CURVE_PUBLICKEY, bytes: Array(keyPair.publicKey.utf8), name: "ZMQ_CURVE_PUBLICKEY")
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(keyPair.secretKey.utf8), name: "ZMQ_CURVE_SECRETKEY")
    }
}
