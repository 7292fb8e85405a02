import ThorExperts
import ThorWire

/// The worker's last replies by (session, shard, request id), so a request the coordinator sends
/// again (its connection was re-established, a fault injector dropped the reply, or it heard
/// nothing of it for too long) is answered without being applied twice, and another shard's or
/// coordinator's request with the same id is never taken for it (docs/reliability.md, "The reply cache").
///
/// Bounds:
/// - **entries**: `perShard` × C, C the largest shard count among the cached replies and the
///   request in hand: the replies of C interleaved shards (and, later, of C coordinators each
///   sending one shard) share it, and each keeps about its last `perShard`;
/// - **bytes**: `maxBytes` (reply tensors stay alive while cached): the oldest replies go first,
///   but never the newest reply of each (session, shard), the one a resend most likely asks for.
/// A request whose reply was evicted is computed again when resent (as before the cache).
/// Touched only by the compute thread.
public struct ReplyCache {
    public struct Entry {
        public var session: UInt64
        public var shard: Shard?
        public var id: UInt64
        public var message: WireMessage
        public var dtype: WireDType
        /// The encoded reply's bytes (envelope and tensor frames).
        public var bytes: Int
        public init(session: UInt64, shard: Shard?, id: UInt64, message: WireMessage, dtype: WireDType = .f32, bytes: Int) {
            self.session = session; self.shard = shard; self.id = id; self.message = message; self.dtype = dtype; self.bytes = bytes
        }
    }

    public static let perShard = 4
    /// Bytes the cached replies may hold in all (the newest of each (session, shard) excepted).
    public var maxBytes: Int
    public private(set) var entries: [Entry] = []   // oldest first
    private var shards = 1

    public init(maxBytes: Int) { self.maxBytes = max(0, maxBytes) }

    /// Entries allowed now.
    public var capacity: Int { Self.perShard * max(1, shards) }
    public var totalBytes: Int { entries.reduce(0) { $0 + $1.bytes } }

    /// Notes the shard count of a request in hand (before its reply is stored or looked up).
    public mutating func noteShards(_ shard: Shard?) { shards = max(shards, shard?.count ?? 1) }

    public func lookup(session: UInt64, shard: Shard?, id: UInt64) -> Entry? {
        entries.last { $0.session == session && $0.shard == shard && $0.id == id }
    }

    public mutating func store(_ e: Entry) {
        entries.append(e)
        // The count bound follows the shard counts still cached (it shrinks once a run goes back to C = 1).
        shards = max(1, entries.map { $0.shard?.count ?? 1 }.max() ?? 1)
        while entries.count > capacity { entries.removeFirst() }
        var bytes = totalBytes
        var i = 0
        while bytes > maxBytes, i < entries.count {
            let e = entries[i]
            let newestOfLane = !entries[(i + 1)...].contains { $0.session == e.session && $0.shard == e.shard }
            if newestOfLane { i += 1; continue }
            bytes -= e.bytes
            entries.remove(at: i)
        }
    }

    /// The default byte bound: an eighth of the worker's memory budget (`WorkerOptions.replyCacheBytes`
    /// overrides it).
    public static func defaultMaxBytes(_ limits: WorkerLimits) -> Int { limits.memoryBudgetBytes / 8 }
}
