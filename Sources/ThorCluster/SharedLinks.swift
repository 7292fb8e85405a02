import ThorWire

/// The coordinator's shared-memory links (protocol 5): for each worker connection (by routing
/// id, so a new incarnation never reads an old one's ring) that offered a region this
/// coordinator could open, the writer of its request ring and the reader of its reply ring.
/// A worker without a link (another host, no offer, the region taken, switched off) gets frames.
public final class SharedLinks {
    /// Off: every offer is declined (`THOR_SHARED_MEMORY=0`, `ClusterCoordinator.sharedMemory`).
    public var enabled: Bool
    struct Link {
        let region: SharedRegion
        let requests: SharedRingWriter
        let replies: SharedRingReader
    }
    private var links: [String: Link] = [:]
    /// Why offers were declined, newest last (for logs and tests).
    public private(set) var declined: [String] = []
    /// Bytes that went through the rings of links dropped so far (live links are added on reading).
    private var droppedPlaced = 0, droppedRead = 0

    public init(enabled: Bool = SharedRegion.enabledByEnvironment) { self.enabled = enabled }

    /// Opens the region `r` offers for its connection, unless it has one already.
    func accept(_ r: Registration) {
        guard enabled, let offer = r.sharedRegion, links[r.routingID] == nil else { return }
        do {
            let region = try SharedRegion.open(offer)
            links[r.routingID] = Link(region: region, requests: region.writer(ring: 0), replies: region.reader(ring: 1))
        } catch {
            declined.append("worker \(r.workerID): \(error)")
        }
    }

    /// Forgets a connection's link (its worker is dead or replaced); tensors still using its
    /// reply ring keep the mapping alive until they are gone.
    func drop(route: String?) {
        guard let route, let l = links.removeValue(forKey: route) else { return }
        droppedPlaced += l.requests.placedBytes
        droppedRead += l.replies.readBytes
    }

    func writer(route: String?) -> SharedRingWriter? { route.flatMap { links[$0]?.requests } }
    func reader(route: String) -> SharedRingReader? { links[route]?.replies }
    /// The token a request on this connection names (`Envelope.shared_region`; 0: frames only).
    func token(route: String?) -> UInt64 { route.flatMap { links[$0]?.region.token } ?? 0 }

    /// Connections with a link now.
    public var count: Int { links.count }
    /// Tensor bytes sent through request rings and received through reply rings so far.
    public var bytesPlaced: Int { links.values.reduce(droppedPlaced) { $0 + $1.requests.placedBytes } }
    public var bytesRead: Int { links.values.reduce(droppedRead) { $0 + $1.replies.readBytes } }
    /// Tensors that went as frames because a request ring was full.
    public var fullFallbacks: Int { links.values.reduce(0) { $0 + $1.requests.fullFallbacks } }
    /// Whether any tensor has travelled through shared memory.
    public var used: Bool { bytesPlaced + bytesRead > 0 }
}
