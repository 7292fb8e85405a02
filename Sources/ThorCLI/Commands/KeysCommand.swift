import ArgumentParser
import ThorCluster
import ThorTransport

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Make CURVE key pairs for encrypted, authenticated coordinator-worker links.",
        discussion: """
        Each machine of a multi-node run gets its own key pair. The coordinator is started \
        with its secret key (--server-key) and the workers' public keys (--allowed-keys, a \
        directory of .pub files); each worker with its own secret key (--key) and the \
        coordinator's public key (--server-public-key). Only listed workers can connect, \
        and every link is encrypted (ZeroMQ CURVE; see cluster/README.md).
        """,
        subcommands: [Generate.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "generate",
            abstract: "Write a new key pair: PREFIX.pub (public) and PREFIX.key (secret, mode 0600).",
            discussion: """
            Keys are 40 characters of Z85 text after a comment line. Copy PREFIX.pub where \
            it is needed; PREFIX.key stays on its machine, readable by its owner only (a \
            secret key file others can read is refused).

            Examples:
              thor keys generate --out keys/coordinator
              thor keys generate --out keys/allowed/node-2     # then give node-2 its .key file
            """)

        @Option(name: .long, help: ArgumentHelp("Path prefix of the two files.", valueName: "prefix"))
        var out: String

        @Flag(name: .long, help: "Replace existing PREFIX.pub / PREFIX.key (peers using the old key are then refused).")
        var force = false

        func validate() throws {
            guard !out.isEmpty, !out.hasSuffix("/") else { throw ValidationError("--out must be a path prefix such as keys/worker-1, got '\(out)'") }
        }

        func run() throws {
            let pair = try CurveKeyPair.generate()
            let files = try KeyFiles.write(pair, prefix: out, force: force)
            print("public key \(pair.publicKey) -> \(files.publicFile)")
            print("secret key -> \(files.secretFile) (mode 0600)")
        }
    }

    static func write(_ pair: CurveKeyPair, prefix: String, force: Bool) throws -> (publicFile: String, secretFile: String) {
        try KeyFiles.write(pair, prefix: prefix, force: force)
    }
}

/// The coordinator's `--server-key` / `--allowed-keys` / `--insecure`, checked against `--bind`.
enum CoordinatorKeyOptions {
    /// The links' keys for a coordinator binding `bind` (nil: unsecured), or a clear error:
    /// keys without --bind, one of the two key options without the other, bad key files, or
    /// a bind beyond loopback without keys and without --insecure.
    static func security(bind: String?, serverKey: String?, allowedKeys: String?, insecure: Bool) throws -> CoordinatorSecurity? {
        let given = [serverKey, allowedKeys].compactMap { $0 }.filter { !$0.isEmpty }
        guard let bind else {
            if !given.isEmpty { throw ValidationError("--server-key and --allowed-keys are for a coordinator serving other machines (--bind tcp://…)") }
            return nil
        }
        guard given.count != 1 else {
            throw ValidationError("--server-key and --allowed-keys go together: the coordinator's secret key and the workers' public keys")
        }
        if let serverKey, let allowedKeys, given.count == 2 {
            if insecure { throw ValidationError("--insecure contradicts --server-key / --allowed-keys; give one or the other") }
            return try CoordinatorSecurity.load(serverKey: serverKey, allowedKeys: allowedKeys)
        }
        try LinkPolicy.check(bind: bind, secured: false, insecure: insecure)
        return nil
    }
}
