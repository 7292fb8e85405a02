import CThorKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a worker offers in its Register (protocol 5, fields 40–42): the name of its shared
/// region in `SharedRegion.directory`, the random token in the region's header, and the
/// bytes of each ring.
public struct SharedRegionOffer: Sendable, Equatable {
    public var name: String
    public var token: UInt64
    public var ringBytes: Int
    public init(name: String, token: UInt64, ringBytes: Int) { self.name = name; self.token = token; self.ringBytes = ringBytes }
}

/// Why a shared region could not be created or opened (the link then uses frames).
public struct SharedRegionError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A shared-memory region for one coordinator–worker link on one host (protocol 5,
/// docs/protocol.md "Protocol 5"): a file in `/dev/shm` holding a header and two rings,
/// ring 1 for requests (the coordinator writes, the worker reads) and ring 2 for replies.
///
/// The worker creates it (`create`: the file is `posix_fallocate`d, so a too small
/// `/dev/shm` fails here instead of raising SIGBUS on first touch, and mapped with
/// `MAP_POPULATE`) and offers it in its Register; the coordinator opens it by name
/// (`open`), checks the token in the header (the same file, hence the same host), maps it
/// and unlinks the file. The worker unlinks it too when the coordinator's first frame
/// arrives and when it exits: once both sides mapped it, nothing is left in `/dev/shm`
/// whoever dies; the memory goes with the last mapping.
///
/// Header (4096 bytes): magic, version, token, ring bytes; at byte 64 + 64·r the position up
/// to which the reader of ring r (0: requests, 1: replies) has released the ring (`SharedRingReader`).
public final class SharedRegion: @unchecked Sendable {
    public static let headerBytes = 4096
    static let magic: UInt64 = 0x3150_4D48_5352_4F48  // "HORSHMP1"
    static let layoutVersion: UInt64 = 1
    /// Bytes of each ring unless told otherwise (a 4096-token MoE layer at d = 512 sends ≈ 8 MiB per worker and direction).
    public static let defaultRingBytes = 32 << 20
    /// Where regions are created (tests point it elsewhere).
    nonisolated(unsafe) public static var directory = "/dev/shm"

    /// Whether the environment allows shared memory (`THOR_SHARED_MEMORY=0` turns it off).
    public static var enabledByEnvironment: Bool {
        guard let v = getenv("THOR_SHARED_MEMORY") else { return true }
        return !["0", "off", "false", "no"].contains(String(cString: v).lowercased())
    }

    public let name: String
    public let token: UInt64
    public let ringBytes: Int
    let base: UnsafeMutableRawPointer
    let mappedBytes: Int
    private var unlinked = false
    private var unlinkLock = pthread_mutex_t()

    private init(name: String, token: UInt64, ringBytes: Int, base: UnsafeMutableRawPointer, mappedBytes: Int, unlinked: Bool) {
        self.name = name; self.token = token; self.ringBytes = ringBytes
        self.base = base; self.mappedBytes = mappedBytes; self.unlinked = unlinked
        pthread_mutex_init(&unlinkLock, nil)
    }

    deinit {
        munmap(base, mappedBytes)
        pthread_mutex_destroy(&unlinkLock)
    }

    public var offer: SharedRegionOffer { SharedRegionOffer(name: name, token: token, ringBytes: ringBytes) }

    static func path(_ name: String) -> String { directory + "/" + name }

    /// A name a peer may send: `thor-` then letters, digits and dashes (never a path).
    static func isValidName(_ name: String) -> Bool {
        name.hasPrefix("thor-") && name.utf8.count <= 64
            && name.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 122) || $0 == 45 }
    }

    static func checkRingBytes(_ n: Int) throws {
        guard n >= 1 << 16, n <= 1 << 30, n % 4096 == 0 else {
            throw SharedRegionError("ring size \(n) bytes is not a multiple of 4096 between 64 KiB and 1 GiB")
        }
    }

    /// Creates, sizes (`posix_fallocate`) and maps a new region (the worker's side).
    public static func create(ringBytes: Int = defaultRingBytes) throws -> SharedRegion {
        try checkRingBytes(ringBytes)
        var rng = SystemRandomNumberGenerator()
        let token = rng.next() | 1
        let name = "thor-\(getpid())-\(String(rng.next() as UInt64, radix: 16))"
        let total = headerBytes + 2 * ringBytes
        let p = path(name)
        let fd = Glibc.open(p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SharedRegionError("cannot create \(p): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let rc = posix_fallocate(fd, 0, off_t(total))
        guard rc == 0 else {
            Glibc.unlink(p)
            throw SharedRegionError("cannot reserve \(total) bytes for \(p) (posix_fallocate: \(String(cString: strerror(rc))); is \(directory) too small?)")
        }
        guard let base = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0), base != MAP_FAILED else {
            let e = errno
            Glibc.unlink(p)
            throw SharedRegionError("cannot map \(p): \(String(cString: strerror(e)))")
        }
        let h = base.assumingMemoryBound(to: UInt64.self)
        h[1] = layoutVersion; h[2] = token; h[3] = UInt64(ringBytes)
        thor_atomic_store_release_u64(h, magic)
        return SharedRegion(name: name, token: token, ringBytes: ringBytes, base: base, mappedBytes: total, unlinked: false)
    }

    /// Opens and maps the region a worker offered (the coordinator's side) and unlinks its file.
    /// Throws when the name is not a region name, the file is missing (another host, or already
    /// taken), its size or header does not match, or the token differs (then it is left alone).
    public static func open(_ offer: SharedRegionOffer) throws -> SharedRegion {
        guard isValidName(offer.name) else { throw SharedRegionError("\"\(offer.name)\" is not a shared region name") }
        try checkRingBytes(offer.ringBytes)
        let p = path(offer.name)
        let fd = Glibc.open(p, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw SharedRegionError("cannot open \(p): \(String(cString: strerror(errno))) (another host, or taken already)") }
        defer { close(fd) }
        let total = headerBytes + 2 * offer.ringBytes
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) == total else {
            throw SharedRegionError("\(p) is not a regular file of \(total) bytes")
        }
        guard let base = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0), base != MAP_FAILED else {
            throw SharedRegionError("cannot map \(p): \(String(cString: strerror(errno)))")
        }
        let h = base.assumingMemoryBound(to: UInt64.self)
        guard thor_atomic_load_acquire_u64(h) == magic, h[1] == layoutVersion, h[2] == offer.token, h[3] == UInt64(offer.ringBytes) else {
            munmap(base, total)
            throw SharedRegionError("\(p) does not hold the offered region (token or layout differs: another host's region of the same name?)")
        }
        Glibc.unlink(p)
        return SharedRegion(name: offer.name, token: offer.token, ringBytes: offer.ringBytes, base: base, mappedBytes: total, unlinked: true)
    }

    /// Removes the file (idempotent; the mappings stay valid).
    public func unlink() {
        pthread_mutex_lock(&unlinkLock); defer { pthread_mutex_unlock(&unlinkLock) }
        guard !unlinked else { return }
        unlinked = true
        Glibc.unlink(Self.path(name))
    }

    /// Start of ring `r` (0: requests, 1: replies).
    func ring(_ r: Int) -> UnsafeMutableRawPointer { base + Self.headerBytes + r * ringBytes }

    private func releasedSlot(_ r: Int) -> UnsafeMutablePointer<UInt64> {
        (base + 64 + 64 * r).assumingMemoryBound(to: UInt64.self)
    }

    /// The position up to which the reader of ring `r` released it.
    func released(_ r: Int) -> UInt64 { thor_atomic_load_acquire_u64(releasedSlot(r)) }
    func publishReleased(_ r: Int, _ position: UInt64) { thor_atomic_store_release_u64(releasedSlot(r), position) }

    /// The writer of ring `r` (0: the coordinator's requests, 1: the worker's replies). One per ring; use from one thread.
    public func writer(ring r: Int) -> SharedRingWriter { SharedRingWriter(region: self, ring: r) }
    /// The reader of ring `r`. One per ring; thread-safe (tensors are released from any thread).
    public func reader(ring r: Int) -> SharedRingReader { SharedRingReader(region: self, ring: r) }
}

/// Puts tensor bytes where the peer can read them in place (protocol 5); nil: no room, send a frame.
public protocol SharedTensorWriter: AnyObject {
    func place(_ bytes: UnsafeRawBufferPointer) -> (ring: UInt32, position: UInt64)?
}

/// Lends the bytes a peer's reference names (protocol 5), or throws `WireError.badTensor` saying why not.
public protocol SharedTensorReader: AnyObject {
    func payload(ring: UInt32, position: UInt64, length: UInt64, what: String) throws -> WirePayload
    /// A message whose shared tensors end at `end` was decoded whole.
    func commit(end: UInt64)
}

/// Alignment of every tensor in a ring (a cache line; f32 needs 4).
let sharedRingAlignment: UInt64 = 64

/// The writing end of a ring: a bump allocator over monotonic byte positions (the offset in
/// the ring is the position modulo its size; a tensor never straddles the end: the writer skips
/// to the next lap). It never writes over bytes the reader has not released: with no room it
/// returns nil and the tensor goes as a frame.
public final class SharedRingWriter: SharedTensorWriter {
    public let region: SharedRegion
    let ring: Int
    private var head: UInt64 = 0
    /// Bytes placed in the ring, and tensors that went as frames for lack of room.
    public private(set) var placedBytes = 0
    public private(set) var fullFallbacks = 0

    init(region: SharedRegion, ring: Int) { self.region = region; self.ring = ring }

    public func place(_ bytes: UnsafeRawBufferPointer) -> (ring: UInt32, position: UInt64)? {
        guard let src = bytes.baseAddress, bytes.count > 0 else { return nil }
        let size = UInt64(region.ringBytes)
        let span = (UInt64(bytes.count) + sharedRingAlignment - 1) & ~(sharedRingAlignment - 1)
        guard span <= size else { fullFallbacks += 1; return nil }
        var h = head
        if h % size + span > size { h += size - h % size }
        let released = min(region.released(ring), head)
        guard h + span - released <= size else { fullFallbacks += 1; return nil }
        memcpy(region.ring(ring) + Int(h % size), src, bytes.count)
        head = h + span
        placedBytes += bytes.count
        return (UInt32(ring + 1), h)
    }
}

/// The reading end of a ring: checks each reference and lends its bytes in place; the lent
/// bytes stay the reader's until the last tensor using them is gone, and only then does the
/// released position (what the writer may reuse) move past them.
public final class SharedRingReader: SharedTensorReader, @unchecked Sendable {
    public let region: SharedRegion
    let ring: Int
    private var mutex = pthread_mutex_t()
    /// Start positions of bytes lent out (with how many tensors use each).
    private var live: [UInt64: Int] = [:]
    /// End of the furthest message decoded whole, and the position published as released.
    private var decodedEnd: UInt64 = 0
    private var published: UInt64 = 0
    public private(set) var readBytes = 0

    init(region: SharedRegion, ring: Int) {
        self.region = region; self.ring = ring
        pthread_mutex_init(&mutex, nil)
    }
    deinit { pthread_mutex_destroy(&mutex) }

    /// Bytes at `position` not yet released (lent out, or sent and not yet decoded).
    public var releasedPosition: UInt64 { lock { published } }
    public var lentCount: Int { lock { live.values.reduce(0, +) } }

    private func lock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }

    public func payload(ring wireRing: UInt32, position: UInt64, length: UInt64, what: String) throws -> WirePayload {
        let size = UInt64(region.ringBytes)
        let bad = { (why: String) in WireError.badTensor("\(what): shared ring \(wireRing), position \(position), \(length) bytes: \(why)") }
        guard wireRing == UInt32(ring + 1) else { throw bad("this side reads ring \(ring + 1) only") }
        guard position % sharedRingAlignment == 0 else { throw bad("position is not a multiple of \(sharedRingAlignment)") }
        guard length <= size, position % size + length <= size else { throw bad("runs past the end of the \(size)-byte ring") }
        return try lock {
            guard position >= published else { throw bad("stale: the ring was released up to position \(published)") }
            guard position + length <= published + size else {
                throw bad("ahead of anything the writer can have written (released up to \(published), ring \(size) bytes)")
            }
            live[position, default: 0] += 1
            readBytes += Int(length)
            let lease = SharedLease(reader: self, start: position)
            return WirePayload(bytes: UnsafeRawBufferPointer(start: region.ring(ring) + Int(position % size), count: Int(length)),
                               owner: lease)
        }
    }

    public func commit(end: UInt64) {
        lock {
            decodedEnd = max(decodedEnd, end)
            publish()
        }
    }

    func release(_ start: UInt64) {
        lock {
            if let n = live[start] { live[start] = n > 1 ? n - 1 : nil }
            publish()
        }
    }

    /// Called locked: everything before the oldest lent bytes, and before the end of the last
    /// message decoded whole, may be reused.
    private func publish() {
        let r = min(live.keys.min() ?? decodedEnd, decodedEnd)
        guard r > published else { return }
        published = r
        region.publishReleased(ring, r)
    }
}

/// Keeps bytes of a ring lent out while a tensor uses them.
final class SharedLease {
    let reader: SharedRingReader
    let start: UInt64
    init(reader: SharedRingReader, start: UInt64) { self.reader = reader; self.start = start }
    deinit { reader.release(start) }
}
