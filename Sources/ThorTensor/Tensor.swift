/// A dense Float32 tensor in row-major order that owns its storage.
///
/// `Tensor` is a reference type so that layers can hand out stable pointers to
/// hot loops and BLAS without copy-on-write surprises. Storage is zero-filled
/// on creation and freed when the last reference goes away.
public final class Tensor: @unchecked Sendable {
    /// Sizes of each dimension, outermost first.
    public private(set) var shape: [Int]
    /// Number of elements (product of `shape`).
    public let count: Int
    /// The elements; `count` of them.
    public let storage: UnsafeMutableBufferPointer<Float>
    /// What keeps borrowed storage alive (nil: the tensor owns and frees its storage).
    private let owner: AnyObject?

    /// Creates a zero-filled tensor of the given shape.
    public init(shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor shape must be non-negative: \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let raw = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(count, 1))
        raw.initialize(repeating: 0)
        self.storage = UnsafeMutableBufferPointer(rebasing: raw[0..<count])
        self.owner = nil
    }

    /// Creates a tensor of the given shape whose elements are not set: for a caller that
    /// writes every element before reading any (skips `init(shape:)`'s zero-fill pass).
    public init(uninitializedShape shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor shape must be non-negative: \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let raw = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(count, 1))
        self.storage = UnsafeMutableBufferPointer(rebasing: raw[0..<count])
        self.owner = nil
    }

    /// Creates a tensor that takes ownership of `storage`, which must come from
    /// `UnsafeMutableRawPointer.allocate` / `UnsafeMutablePointer.allocate` with room
    /// for `max(count, 1)` floats; it is deallocated with the tensor. No copy, no zero-fill
    /// (used by the wire decoder to keep protobuf-c's unpacked bytes).
    public init(adopting storage: UnsafeMutablePointer<Float>, shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor shape must be non-negative: \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.storage = UnsafeMutableBufferPointer(start: storage, count: count)
        self.owner = nil
    }

    /// Creates a tensor whose elements are `count` floats at `storage`, memory that
    /// `owner` keeps alive (e.g. a received ZeroMQ frame). No copy; the tensor holds
    /// `owner` and never frees `storage` itself. `storage` must be Float-aligned.
    public init(borrowing storage: UnsafeMutablePointer<Float>, shape: [Int], owner: AnyObject) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor shape must be non-negative: \(shape)")
        precondition(Int(bitPattern: storage) % MemoryLayout<Float>.alignment == 0, "borrowed tensor storage is misaligned")
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.storage = UnsafeMutableBufferPointer(start: storage, count: count)
        self.owner = owner
    }

    /// Creates a tensor of the given shape holding `values` (row-major).
    public convenience init(shape: [Int], values: [Float]) {
        self.init(shape: shape)
        precondition(values.count == count, "Tensor(shape: \(shape)) needs \(count) values, got \(values.count)")
        values.withUnsafeBufferPointer { src in
            if count > 0 { pointer.update(from: src.baseAddress!, count: count) }
        }
    }

    /// Creates a copy of `other`.
    public convenience init(copying other: Tensor) {
        self.init(uninitializedShape: other.shape)
        if count > 0 { pointer.update(from: other.pointer, count: count) }
    }

    deinit {
        // storage may be a zero-length rebase of a one-element allocation.
        if owner == nil { UnsafeMutableRawPointer(mutating: storageBase).deallocate() }
    }

    private var storageBase: UnsafeMutablePointer<Float> { storage.baseAddress! }

    /// The first element's address. Valid while the tensor is alive.
    @inlinable public var pointer: UnsafeMutablePointer<Float> { storage.baseAddress! }

    /// Number of rows when the tensor is read as a matrix `[rows, last]`.
    public var rows: Int { shape.count <= 1 ? 1 : shape.dropLast().reduce(1, *) }
    /// Size of the last dimension.
    public var columns: Int { shape.last ?? 1 }

    /// Reinterprets the elements with a new shape of the same element count.
    public func reshape(_ newShape: [Int]) {
        precondition(newShape.reduce(1, *) == count, "reshape \(shape) -> \(newShape) changes the element count")
        shape = newShape
    }

    /// Sets every element to zero.
    public func zero() {
        if count > 0 { pointer.update(repeating: 0, count: count) }
    }

    /// Copies the elements of `other`, which must have the same count.
    public func copy(from other: Tensor) {
        precondition(other.count == count, "copy: \(other.shape) into \(shape)")
        if count > 0 { pointer.update(from: other.pointer, count: count) }
    }

    /// The elements as an array (for tests, I/O and debugging; not for hot loops).
    public var array: [Float] { Array(storage) }

    /// Element access by flat index (for tests and set-up; not for hot loops).
    public subscript(index: Int) -> Float {
        get { storage[index] }
        set { storage[index] = newValue }
    }

    /// True when both tensors have the same shape and the same bits.
    public func bitwiseEqual(_ other: Tensor) -> Bool {
        guard shape == other.shape else { return false }
        return memcmp(pointer, other.pointer, count * MemoryLayout<Float>.stride) == 0
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
