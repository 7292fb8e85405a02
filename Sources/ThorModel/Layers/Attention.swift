import Dispatch
import ThorTensor
import CThorKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Scaled dot-product multi-head attention over already projected Q, K, V.
///
/// Shapes (row-major, `dh = d / heads`, head `h` owns columns `h·dh ..< (h+1)·dh`):
///   q [B, Tq, d]; k, v [B, keyCapacity, d] of which the first `Tk` rows per sentence are used;
///   keyMask [B, maskStride] (1 real key, 0 padding; nil: every key real);
///   probs [B, heads, Tq, Tk] softmax output (kept); weights [B, heads, Tq, Tk] the
///   attention weights after dropout (`probs ⊙ dropMask`, kept when dropout is on);
///   out [B, Tq, d].
/// Query `s` sits at absolute position `queryStart + s`; with `causal` it sees keys
/// `j ≤ queryStart + s`, and also every key `j < prefixLength` (prefix-LM: with `prefixLength = P`
/// the first `P` positions attend to each other bidirectionally and the rest causally).
/// Masked scores are −∞; a row with no visible key gives zeros.
public enum AttentionKernel {
    public struct Shape: Sendable {
        public var batch: Int, queryLength: Int, keyLength: Int, keyCapacity: Int
        public var dim: Int, heads: Int, queryStart: Int, causal: Bool, maskStride: Int
        /// Keys `0 ..< prefixLength` are visible to every query even with `causal` (prefix-LM).
        public var prefixLength: Int
        public init(batch: Int, queryLength: Int, keyLength: Int, keyCapacity: Int? = nil, dim: Int, heads: Int,
                    queryStart: Int = 0, causal: Bool, maskStride: Int? = nil, prefixLength: Int = 0) {
            self.prefixLength = prefixLength
            self.batch = batch; self.queryLength = queryLength; self.keyLength = keyLength
            self.keyCapacity = keyCapacity ?? keyLength; self.dim = dim; self.heads = heads
            self.queryStart = queryStart; self.causal = causal; self.maskStride = maskStride ?? keyLength
        }
        public var headDim: Int { dim / heads }
        public var probsCount: Int { batch * heads * queryLength * keyLength }
    }

    /// Forward. `dropMask` (same shape as `probs`) applies attention dropout into `weights`;
    /// with `dropMask == nil`, `weights` may be the same buffer as `probs`. The (sentence, head)
    /// pairs are independent and run on up to `threads` threads (each with one BLAS thread):
    /// the same bits for any `threads`.
    public static func forward(
        out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>, weights: UnsafeMutablePointer<Float>,
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        keyMask: UnsafePointer<Float>?, dropMask: UnsafePointer<Float>?, shape s: Shape, threads: Int = 1
    ) {
        let d = s.dim, dh = s.headDim, tq = s.queryLength, tk = s.keyLength
        let scale = 1 / Float(dh).squareRoot()
        forEachPair(s, threads: threads) { b, h, _ in
            let qbh = q + b * tq * d + h * dh
            let kbh = k + b * s.keyCapacity * d + h * dh
            let vbh = v + b * s.keyCapacity * d + h * dh
            let pbh = probs + ((b * s.heads + h) * tq) * tk
            let wbh = weights + ((b * s.heads + h) * tq) * tk
            gemm(transB: true, m: tq, n: tk, k: dh, alpha: scale, a: qbh, lda: d, b: kbh, ldb: d, c: pbh, ldc: tk)
            let m = keyMask.map { $0 + b * s.maskStride }
            for i in 0..<tq {
                let row = pbh + i * tk
                let visible = s.causal ? min(tk, max(s.prefixLength, s.queryStart + i + 1)) : tk
                var mx = -Float.infinity
                for j in 0..<tk {
                    if j >= visible || (m != nil && m![j] == 0) { row[j] = -Float.infinity } else { mx = max(mx, row[j]) }
                }
                if mx == -Float.infinity { row.update(repeating: 0, count: tk); continue }
                // mx > −inf here, so a hidden entry gives expf(−inf − mx) = +0: glibc's `expf` bits,
                // vectorized (CThorKernels); the sum stays in index order.
                thor_expf_shifted_in_place(row, mx, tk)
                var sum: Float = 0
                for j in 0..<tk { sum += row[j] }
                let inv = 1 / sum
                for j in 0..<tk { row[j] *= inv }
            }
            if let dm = dropMask {
                let mbh = dm + ((b * s.heads + h) * tq) * tk
                for i in 0..<(tq * tk) { wbh[i] = pbh[i] * mbh[i] }
            }
            gemm(m: tq, n: dh, k: tk, a: dropMask == nil ? pbh : wbh, lda: tk, b: vbh, ldb: d,
                 c: out + b * tq * d + h * dh, ldc: d)
        }
    }

    /// `body(b, h, slot)` for every sentence `b` and head `h`, on up to `threads` threads, each
    /// taking a contiguous range of pairs (`slot`: the range's index, for per-thread scratch);
    /// with more than one thread OpenBLAS runs on one thread meanwhile.
    static func forEachPair(_ s: Shape, threads: Int, _ body: (Int, Int, Int) -> Void) {
        let pairs = s.batch * s.heads
        let chunks = max(1, min(threads, pairs))
        if chunks == 1 {
            for p in 0..<pairs { body(p / s.heads, p % s.heads, 0) }
            return
        }
        let saved = BLASThreads.current
        BLASThreads.set(1)
        defer { BLASThreads.set(saved) }
        withoutActuallyEscaping(body) { body in
            nonisolated(unsafe) let run = body
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                for p in (c * pairs / chunks)..<((c + 1) * pairs / chunks) { run(p / s.heads, p % s.heads, c) }
            }
        }
    }

    /// Backward of `forward` (with `keyCapacity == keyLength`). Overwrites `dq`, `dk`, `dv`;
    /// `scratch` holds `queryLength · keyLength` floats (used with one thread; more threads take
    /// their own). Pairs run as in `forward`: the same bits for any `threads`.
    public static func backward(
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
        dout: UnsafePointer<Float>, probs: UnsafePointer<Float>, weights: UnsafePointer<Float>,
        dropMask: UnsafePointer<Float>?,
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        scratch: UnsafeMutablePointer<Float>, shape s: Shape, threads: Int = 1
    ) {
        precondition(s.keyCapacity == s.keyLength, "attention backward needs densely packed keys")
        let d = s.dim, dh = s.headDim, tq = s.queryLength, tk = s.keyLength
        let scale = 1 / Float(dh).squareRoot()
        let pairs = s.batch * s.heads, chunks = max(1, min(threads, pairs))
        // One scratch per concurrent range: the caller's for the first, new ones for the rest.
        let extra = UnsafeMutablePointer<Float>.allocate(capacity: max(1, (chunks - 1) * tq * tk))
        defer { extra.deallocate() }
        forEachPair(s, threads: chunks) { b, h, slot in
            let scratch = slot == 0 ? scratch : extra + (slot - 1) * tq * tk
            let off = b * tq * d + h * dh, koff = b * tk * d + h * dh
            let pbh = probs + ((b * s.heads + h) * tq) * tk
            let wbh = dropMask == nil ? pbh : weights + ((b * s.heads + h) * tq) * tk
            // dV = Wᵀ · dOut ; dW = dOut · Vᵀ
            gemm(transA: true, m: tk, n: dh, k: tq, a: wbh, lda: tk, b: dout + off, ldb: d, c: dv + koff, ldc: d)
            gemm(transB: true, m: tq, n: tk, k: dh, a: dout + off, lda: d, b: v + koff, ldb: d, c: scratch, ldc: tk)
            if let dm = dropMask {
                let mbh = dm + ((b * s.heads + h) * tq) * tk
                for i in 0..<(tq * tk) { scratch[i] *= mbh[i] }
            }
            // dS = P ⊙ (dP − Σ_j dP·P) · scale
            for i in 0..<tq {
                let p = pbh + i * tk, g = scratch + i * tk
                var dot: Float = 0
                for j in 0..<tk { dot += p[j] * g[j] }
                for j in 0..<tk { g[j] = p[j] * (g[j] - dot) * scale }
            }
            gemm(m: tq, n: dh, k: tk, a: scratch, lda: tk, b: k + koff, ldb: d, c: dq + off, ldc: d)
            gemm(transA: true, m: tk, n: dh, k: tq, a: scratch, lda: tk, b: q + off, ldb: d, c: dk + koff, ldc: d)
        }
    }
}

/// A linear map `y = x · w + b` with `w` [in, out] (the layout of `FeedForward`).
public enum Linear {
    /// Overwrites `y` [n, out].
    public static func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                               b: UnsafePointer<Float>, n: Int, inDim: Int, outDim: Int) {
        Kernels.fillRows(y, with: b, rows: n, cols: outDim)
        gemm(m: n, n: outDim, k: inDim, a: x, b: w, beta: 1, c: y)
    }

    /// `dw += xᵀ·dy`, `db += Σ_rows dy`, `dx (+)= dy·wᵀ` (`accumulate` chooses += or =).
    public static func backward(dx: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                                db: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                w: UnsafePointer<Float>, n: Int, inDim: Int, outDim: Int, accumulate: Bool) {
        gemm(transA: true, m: inDim, n: outDim, k: n, a: x, b: dy, beta: 1, c: dw)
        Kernels.addColumnSums(dy, rows: n, cols: outDim, into: db)
        gemm(transB: true, m: n, n: inDim, k: outDim, a: dy, b: w, beta: accumulate ? 1 : 0, c: dx)
    }
}

/// Multi-head attention with Q, K, V, O projections (weights [d, d] as `x · w`, biases [d]):
/// encoder self-attention (key padding), decoder causal self-attention (key padding too)
/// and cross-attention (keys/values from the encoder, source padding).
/// Parameter names: `<name>.wq`, `.bq`, `.wk`, `.bk`, `.wv`, `.bv`, `.wo`, `.bo`.
public final class MultiHeadAttention {
    public let dim: Int, heads: Int
    public let wq: Parameter, bq: Parameter, wk: Parameter, bk: Parameter
    public let wv: Parameter, bv: Parameter, wo: Parameter, bo: Parameter

    private struct Saved {
        var xq: Tensor, xkv: Tensor?, q: Tensor, k: Tensor, v: Tensor
        var probs: Tensor, weights: Tensor, dropMask: Tensor?, context: Tensor
        var shape: AttentionKernel.Shape
    }
    private var saved: Saved?

    public init(name: String, dim d: Int, heads: Int, rng: inout RandomGenerator) {
        precondition(heads > 0 && d % heads == 0, "model width \(d) must be a multiple of heads \(heads)")
        dim = d; self.heads = heads
        func p(_ s: String, _ shape: [Int]) -> Parameter { Parameter(name: "\(name).\(s)", shape: shape) }
        wq = p("wq", [d, d]); bq = p("bq", [d]); wk = p("wk", [d, d]); bk = p("bk", [d])
        wv = p("wv", [d, d]); bv = p("bv", [d]); wo = p("wo", [d, d]); bo = p("bo", [d])
        let limit = Float(6.0 / Double(2 * d)).squareRoot()
        for w in [wq, wk, wv, wo] { rng.fillUniform(w.value.pointer, count: w.count, limit: limit) }
    }

    public var parameters: [Parameter] { [wq, bq, wk, bk, wv, bv, wo, bo] }

    private func linear(_ x: Tensor, _ w: Parameter, _ b: Parameter) -> Tensor {
        let y = Tensor(uninitializedShape: [x.rows, dim])  // every element written
        Linear.forward(y: y.pointer, x: x.pointer, w: w.value.pointer, b: b.value.pointer,
                       n: x.rows, inDim: dim, outDim: dim)
        return y
    }

    /// Full pass. `query` [B·Tq, d]; `keyValue` [B·Tk, d] or nil for self-attention;
    /// `keyMask` [B·Tk] (nil: all real). Attention dropout with `dropout` when training.
    /// Returns [B·Tq, d]; keeps activations for `backward` when `training`.
    public func forward(query: Tensor, keyValue: Tensor?, shape: AttentionKernel.Shape, keyMask: [Float]?,
                        dropout: Float, training: Bool, rng: inout RandomGenerator) -> Tensor {
        let src = keyValue ?? query
        let q = linear(query, wq, bq), k = linear(src, wk, bk), v = linear(src, wv, bv)
        let probs = Tensor(shape: [shape.probsCount])
        var dropMask: Tensor? = nil
        if training && dropout > 0 {
            let m = Tensor(shape: [shape.probsCount])
            Dropout.makeMask(m.pointer, count: m.count, rate: dropout, rng: &rng)
            dropMask = m
        }
        let weights = dropMask == nil ? probs : Tensor(shape: [shape.probsCount])
        let context = attend(q: q, keys: k, values: v, probs: probs, weights: weights, keyMask: keyMask,
                             dropMask: dropMask, shape: shape, threads: Parallel.processors)
        let out = linear(context, wo, bo)
        saved = training ? Saved(xq: query, xkv: keyValue, q: q, k: k, v: v, probs: probs, weights: weights,
                                 dropMask: dropMask, context: context, shape: shape) : nil
        return out
    }

    /// Backward of the last training `forward`: accumulates parameter gradients and returns
    /// `∂L/∂query` and, for cross-attention, `∂L/∂keyValue` (self-attention: nil, both in the first).
    public func backward(_ gradOutput: Tensor) -> (query: Tensor, keyValue: Tensor?) {
        guard let s = saved else { preconditionFailure("MultiHeadAttention.backward without a training forward") }
        saved = nil
        let nq = s.xq.rows, nk = s.k.rows, d = dim
        let dContext = Tensor(shape: [nq, d])
        Linear.backward(dx: dContext.pointer, dw: wo.grad.pointer, db: bo.grad.pointer, dy: gradOutput.pointer,
                        x: s.context.pointer, w: wo.value.pointer, n: nq, inDim: d, outDim: d, accumulate: false)
        let dq = Tensor(shape: [nq, d]), dk = Tensor(shape: [nk, d]), dv = Tensor(shape: [nk, d])
        let scratch = Tensor(shape: [s.shape.queryLength * s.shape.keyLength])
        AttentionKernel.backward(dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, dout: dContext.pointer,
                                 probs: s.probs.pointer, weights: s.weights.pointer,
                                 dropMask: s.dropMask.map { UnsafePointer($0.pointer) },
                                 q: s.q.pointer, k: s.k.pointer, v: s.v.pointer, scratch: scratch.pointer, shape: s.shape,
                                 threads: Parallel.processors)
        let dxq = Tensor(shape: [nq, d])
        Linear.backward(dx: dxq.pointer, dw: wq.grad.pointer, db: bq.grad.pointer, dy: dq.pointer,
                        x: s.xq.pointer, w: wq.value.pointer, n: nq, inDim: d, outDim: d, accumulate: false)
        let dxkv = s.xkv == nil ? dxq : Tensor(shape: [nk, d])
        let xkv = s.xkv ?? s.xq
        let acc = s.xkv == nil
        Linear.backward(dx: dxkv.pointer, dw: wk.grad.pointer, db: bk.grad.pointer, dy: dk.pointer,
                        x: xkv.pointer, w: wk.value.pointer, n: nk, inDim: d, outDim: d, accumulate: acc)
        Linear.backward(dx: dxkv.pointer, dw: wv.grad.pointer, db: bv.grad.pointer, dy: dv.pointer,
                        x: xkv.pointer, w: wv.value.pointer, n: nk, inDim: d, outDim: d, accumulate: true)
        return (dxq, s.xkv == nil ? nil : dxkv)
    }

    /// Projected keys and values of `x` [n, d] (for caches in incremental decoding).
    public func keysAndValues(_ x: Tensor) -> (keys: Tensor, values: Tensor) {
        (linear(x, wk, bk), linear(x, wv, bv))
    }

    /// Projected queries of `x` [n, d].
    public func queries(_ x: Tensor) -> Tensor { linear(x, wq, bq) }

    /// Inference attention of one query row per sentence, `x` [B, d], against cached
    /// `keys`/`values` [B, keyCapacity, d] (first `shape.keyLength` rows used). No dropout.
    public func attendCached(query x: Tensor, keys: Tensor, values: Tensor, shape: AttentionKernel.Shape,
                             keyMask: [Float]?) -> Tensor {
        let probs = Tensor(shape: [shape.probsCount])
        let context = attend(q: linear(x, wq, bq), keys: keys, values: values, probs: probs, weights: probs,
                             keyMask: keyMask, dropMask: nil, shape: shape)
        return linear(context, wo, bo)
    }

    /// `AttentionKernel.forward` into a new context `[B·Tq, d]`, with the optional key mask pinned.
    private func attend(q: Tensor, keys: Tensor, values: Tensor, probs: Tensor, weights: Tensor,
                        keyMask: [Float]?, dropMask: Tensor?, shape: AttentionKernel.Shape, threads: Int = 1) -> Tensor {
        let context = Tensor(shape: [q.rows, dim])
        func run(_ mask: UnsafePointer<Float>?) {
            AttentionKernel.forward(out: context.pointer, probs: probs.pointer, weights: weights.pointer,
                                    q: q.pointer, k: keys.pointer, v: values.pointer, keyMask: mask,
                                    dropMask: dropMask.map { UnsafePointer($0.pointer) }, shape: shape, threads: threads)
        }
        if let keyMask { keyMask.withUnsafeBufferPointer { run($0.baseAddress!) } } else { run(nil) }
        return context
    }
}
