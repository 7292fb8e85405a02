import ThorTransport

/// The coordinator's side of CURVE-secured links: its key pair and the workers' public
/// keys it admits (checked by a ``ZAPHandler``; every link is encrypted).
public struct CoordinatorSecurity: Sendable {
    public var keyPair: CurveKeyPair
    /// Admitted worker public keys (Z85) → where each came from (for logs).
    public var allowedKeys: [String: String]

    public init(keyPair: CurveKeyPair, allowedKeys: [String: String]) {
        self.keyPair = keyPair
        self.allowedKeys = allowedKeys
    }

    /// Reads the coordinator's secret key file and the allowed keys (a directory of `*.pub`
    /// files or one file of keys).
    public static func load(serverKey: String, allowedKeys: String) throws -> CoordinatorSecurity {
        CoordinatorSecurity(keyPair: try KeyFiles.readSecret(serverKey), allowedKeys: try KeyFiles.readAllowed(allowedKeys))
    }
}

/// A worker's side of CURVE-secured links: its key pair and the coordinator's public key.
public struct WorkerSecurity: Sendable {
    public var keyPair: CurveKeyPair
    public var serverPublicKey: String

    public init(keyPair: CurveKeyPair, serverPublicKey: String) {
        self.keyPair = keyPair
        self.serverPublicKey = serverPublicKey
    }

    /// Reads the worker's secret key file and the coordinator's public key file.
    public static func load(key: String, serverPublicKey: String) throws -> WorkerSecurity {
        WorkerSecurity(keyPair: try KeyFiles.readSecret(key), serverPublicKey: try KeyFiles.readPublic(serverPublicKey))
    }
}

/// When a coordinator must use keys.
public enum LinkPolicy {
    /// Whether binding `endpoint` lets other machines connect: tcp on any address but
    /// loopback (127.0.0.0/8, `localhost`, `::1`). ipc endpoints stay on this machine.
    public static func reachesOtherMachines(_ endpoint: String) -> Bool {
        guard endpoint.hasPrefix("tcp://") else { return false }
        var host = endpoint.dropFirst("tcp://".count)
        if let colon = host.lastIndex(of: ":") { host = host[..<colon] }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        if host == "localhost" || host == "::1" { return false }
        if host.hasPrefix("127."), host.split(separator: ".").count == 4, host.allSatisfy({ $0.isNumber || $0 == "." }) { return false }
        return true
    }

    /// Throws naming `--insecure` when `endpoint` reaches other machines and no keys are given.
    public static func check(bind endpoint: String, secured: Bool, insecure: Bool) throws {
        guard !secured, !insecure, reachesOtherMachines(endpoint) else { return }
        throw InsecureBindError(endpoint: endpoint)
    }
}

/// Binding beyond loopback without keys, and no `--insecure`.
public struct InsecureBindError: Error, CustomStringConvertible, Equatable {
    public var endpoint: String
    public var description: String {
        "--bind \(endpoint) accepts workers from other machines, but no keys were given: anyone on the network could join, "
            + "receive activations and inject gradients. Give --server-key FILE and --allowed-keys DIR "
            + "(make key pairs with `thor keys generate --out PREFIX`), or --insecure to run unencrypted on a trusted network."
    }
}
