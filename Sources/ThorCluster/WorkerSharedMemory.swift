import ThorWire

/// A worker's end of its shared-memory link (protocol 5): the region it created and offers in
/// every Register, the reader of its request ring and the writer of its reply ring.
///
/// The worker reads ring references in any request (they are checked against its own region),
/// and answers through the reply ring only a request naming its region's token
/// (`Envelope.shared_region`): only a coordinator that mapped the region can read it.
final class WorkerSharedMemory: @unchecked Sendable {
    let region: SharedRegion
    let requests: SharedRingReader
    let replies: SharedRingWriter

    init(region: SharedRegion) {
        self.region = region
        requests = region.reader(ring: 0)
        replies = region.writer(ring: 1)
    }

    /// The worker's region, or nil (switched off, or it could not be created: then frames; `log` says why).
    static func create(_ options: WorkerOptions, log: (String) -> Void) -> WorkerSharedMemory? {
        guard options.sharedMemory else { return nil }
        do {
            return WorkerSharedMemory(region: try SharedRegion.create(ringBytes: options.sharedRingBytes))
        } catch {
            log("no shared memory, tensors go as frames: \(error)")
            return nil
        }
    }

    /// Where the reply to `envelope` puts its tensors: the reply ring when the request names this region.
    func replyRing(for envelope: Envelope) -> SharedRingWriter? {
        envelope.sharedRegion != 0 && envelope.sharedRegion == region.token ? replies : nil
    }
}
