import ThorWire
import ThorTransport

/// The worker's I/O thread's record of the requests it holds, which its beats report
/// (`Envelope.progress`, docs/reliability.md, "Resending only what was lost"): every request
/// handed to the compute thread and not yet answered, then, once answered, the size of its
/// reply (the last `answeredKept` of those). The compute thread answers every request it is
/// handed exactly once and in order, so answers are matched to requests first in, first out.
/// Touched only by the I/O thread; costs one header scan per request and a few bytes per beat.
public struct RequestProgressTracker {
    public init() {}
    /// Requests handed to the compute thread and not yet answered, oldest first (nil: a message
    /// whose header names no request, still counted so that answers stay matched).
    private var serving: [(session: UInt64, id: UInt64)?] = []
    /// Answered requests, oldest first, with their reply's bytes.
    private var answered: [RequestProgress] = []
    public static let answeredKept = 8

    /// A message the I/O thread hands to the compute thread (frames without the routing id).
    public mutating func handedOn(_ frames: [Frame]) {
        let ids = frames.first.flatMap { f in f.withUnsafeBytes { Self.peekIDs($0) } }
        serving.append(ids.flatMap { $0.id == 0 ? nil : $0 })
    }

    /// The compute thread's answer to the oldest request handed on (an empty answer: no reply).
    public mutating func answered(_ reply: [Frame]) {
        guard !serving.isEmpty, let r = serving.removeFirst() else { return }
        let bytes = reply.reduce(0) { $0 + $1.count }
        guard bytes > 0 else { return }
        answered.append(RequestProgress(session: r.session, requestID: r.id, replyBytes: UInt64(bytes)))
        if answered.count > Self.answeredKept { answered.removeFirst(answered.count - Self.answeredKept) }
    }

    /// What the next beat reports: answered requests, then those being served (at most `limit`
    /// entries, the newest kept: beats must stay small).
    public func report(limit: Int = 64) -> [RequestProgress] {
        let all = answered + serving.compactMap { $0.map { RequestProgress(session: $0.session, requestID: $0.id) } }
        return Array(all.suffix(limit))
    }

    /// The session (field 4) and request id (field 2) of an Envelope frame, read from its
    /// leading protobuf fields without decoding it (protobuf-c packs fields in number order, so
    /// both come before the body; the scan stops at the first field numbered 10 or more).
    /// nil when the bytes are not such a frame (the compute thread then answers with an Error).
    public static func peekIDs(_ bytes: UnsafeRawBufferPointer) -> (session: UInt64, id: UInt64)? {
        var i = 0, session: UInt64 = 0, id: UInt64 = 0
        func varint() -> UInt64? {
            var v: UInt64 = 0, shift: UInt64 = 0
            while i < bytes.count, shift < 64 {
                let b = bytes[i]; i += 1
                v |= UInt64(b & 0x7f) << shift
                if b & 0x80 == 0 { return v }
                shift += 7
            }
            return nil
        }
        while i < bytes.count {
            guard let key = varint() else { return nil }
            let field = key >> 3, wire = key & 7
            if field >= 10 { break }
            switch wire {
            case 0:
                guard let v = varint() else { return nil }
                if field == 2 { id = v } else if field == 4 { session = v }
            case 2:
                guard let n = varint(), n <= UInt64(bytes.count - i) else { return nil }
                i += Int(n)
            case 1: i += 8
            case 5: i += 4
            default: return nil
            }
        }
        return (session, id)
    }
}
