import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorWire
import ThorTransport
import ThorCluster
import ThorTraining

/// Measures the component rates the cost model is built from, on this machine, one BLAS
/// thread (one core): expert FFN and attention flop/s, routing and combine cost, WireCodec
/// rates, Adam, and ipc / tcp loopback latency and bandwidth (ZeroMQ PAIR ping-pong).
enum ScalingRateProbe {
    /// Fills in what `rates` lacks for `configurations` (widths, width × experts) and returns it.
    static func complete(_ rates: ComponentRates?, for configurations: [ScalingConfiguration],
                         info: (String) -> Void) throws -> ComponentRates {
        let saved = BLASThreads.current
        BLASThreads.set(1)
        defer { BLASThreads.set(saved) }
        var r: ComponentRates
        if let rates { r = rates } else {
            info("measuring codec, Adam and link rates")
            let codec = try codecRates()
            r = ComponentRates(cores: ProcessInfo.processInfo.activeProcessorCount,
                               encodeBytesPerSecond: codec.encode, decodeBytesPerSecond: codec.decode,
                               adamParametersPerSecond: adamRate(), links: [:])
        }
        for t in LocalCluster.Transport.allCases where r.links[t.rawValue] == nil || r.sendSecondsPerMessage?[t.rawValue] == nil {
            let m = try linkRate(t)
            r.links[t.rawValue] = m.link
            r.sendSecondsPerMessage = (r.sendSecondsPerMessage ?? [:]).merging([t.rawValue: m.send]) { $1 }
        }
        let netns = ScalingConfiguration.emulatedNodesTransport
        if configurations.contains(where: { $0.transport == netns }), r.links[netns] == nil {
            info("measuring the emulated-node link (veth between network namespaces)")
            let m = try emulatedNodeLinkRate()
            r.links[netns] = m.link
            r.sendSecondsPerMessage = (r.sendSecondsPerMessage ?? [:]).merging([netns: m.send]) { $1 }
        }
        for c in configurations {
            let d = String(c.width)
            if r.expertFlopsPerCore[d] == nil {
                info("measuring expert FFN rate at d=\(c.width)")
                r.expertFlopsPerCore[d] = expertRate(width: c.width)
            }
            let key = ComponentRates.routingKey(modelDim: c.width, experts: c.experts)
            if r.routingSecondsPerToken[key] == nil || r.attentionFlopsPerCore[d] == nil || r.combineSecondsPerAssignment[d] == nil {
                info("measuring attention, routing and combine in process at d=\(c.width), N=\(c.experts)")
                var probe = c
                probe.tokens = 512; probe.workers = 1; probe.replicas = 1
                let m = try inProcess(probe)
                r.routingSecondsPerToken[key] = m.routing
                if r.attentionFlopsPerCore[d] == nil { r.attentionFlopsPerCore[d] = m.attention }
                if r.combineSecondsPerAssignment[d] == nil { r.combineSecondsPerAssignment[d] = m.combine }
            }
        }
        return r
    }

    /// Expert FFN forward + backward flop/s at 128 rows, width d, d_ff = 4d (best of 25: on a
    /// shared machine only the best runs are undisturbed).
    static func expertRate(width d: Int) -> Double {
        let n = 128, f = 4 * d
        var g = RandomGenerator(seed: 1)
        func filled(_ count: Int) -> Tensor { let t = Tensor(shape: [count]); g.fillNormal(t.pointer, count: count, std: 0.05); return t }
        let x = filled(n * d), w1 = filled(d * f), b1 = filled(f), w2 = filled(f * d), b2 = filled(d), dy = filled(n * d)
        let h = Tensor(shape: [n * f]), a = Tensor(shape: [n * f]), y = Tensor(shape: [n * d]), dx = Tensor(shape: [n * d])
        let dw1 = Tensor(shape: [d * f]), db1 = Tensor(shape: [f]), dw2 = Tensor(shape: [f * d]), db2 = Tensor(shape: [d])
        let dh = Tensor(shape: [n * f]), da = Tensor(shape: [n * f])
        let reps = max(1, Int(2e7 / (12 * Double(n * d * f))))
        let t = bestTime(repeats: 25) {
            for _ in 0..<reps {
                FeedForward.forward(y: y.pointer, h: h.pointer, a: a.pointer, x: x.pointer, w1: w1.pointer, b1: b1.pointer,
                                    w2: w2.pointer, b2: b2.pointer, n: n, d: d, dFF: f, activation: .relu)
                FeedForward.backward(dx: dx.pointer, dw1: dw1.pointer, db1: db1.pointer, dw2: dw2.pointer, db2: db2.pointer,
                                     dy: dy.pointer, h: h.pointer, a: a.pointer, x: x.pointer, w1: w1.pointer, w2: w2.pointer,
                                     dh: dh.pointer, da: da.pointer, n: n, d: d, dFF: f, activation: .relu)
            }
        } / Double(reps)
        blackHole((dx, dw1, db1, dw2, db2))
        return 12 * Double(n * d * f) / t
    }

    /// The scaling step in process (one thread): attention flop/s, routing seconds per token and
    /// MoE layer, combine seconds per kept assignment. Each phase is its fastest over 25 steps
    /// (a phase is short, so on a shared machine most steps have an undisturbed instance of it,
    /// while an undisturbed whole step is rare).
    static func inProcess(_ c: ScalingConfiguration) throws -> (attention: Double, routing: Double, combine: Double) {
        let backend = InProcessExpertBackend(spec: MoEStack.expertSpec(model: c.model, seed: 1),
                                             keys: ScalingHarness.keys(c), threads: 1)
        let harness = try ScalingHarness(c, backend: backend)
        _ = try harness.step()
        var fastest: [ScalingPhase: Double] = [:]
        var assignments = 0
        for _ in 0..<25 {
            let s = try harness.step()
            for (p, t) in s.phases { fastest[p] = min(fastest[p] ?? .infinity, t) }
            assignments = s.assignments
        }
        let w = ScalingWorkload(tokens: c.batchTokens, length: ScalingConfiguration.length, modelDim: c.width, hiddenDim: c.hiddenDim,
                                experts: c.experts, moeLayers: ScalingConfiguration.moeLayers, workers: 1, coresPerNode: 1,
                                expertsPerToken: 1, imbalance: 1)
        return (w.attentionFlops / fastest[.attention]!,
                fastest[.routing]! / Double(c.batchTokens * ScalingConfiguration.moeLayers),
                fastest[.combine]! / Double(max(1, assignments)))
    }

    /// WireCodec encode and decode bytes/s of a 1 MiB forward request (8 batches of 128 × 256).
    static func codecRates() throws -> (encode: Double, decode: Double) {
        var g = RandomGenerator(seed: 2)
        let batches = (0..<8).map { e -> ExpertBatch in
            let t = Tensor(shape: [128, 256]); g.fillNormal(t.pointer, count: t.count, std: 1)
            return ExpertBatch(expert: e, tokens: t)
        }
        let m = try CodecMeasurement.measure(batches: batches, dtype: .f32, repeats: 20)
        return (Double(m.tensorBytes) / m.encodeSeconds, Double(m.tensorBytes) / m.decodeSeconds)
    }

    /// Adam parameters per second (256 Ki parameters, best of 25).
    static func adamRate() -> Double {
        let p = Parameter(name: "adam-probe", shape: [1 << 18])
        var step = 0
        let t = bestTime(repeats: 25) {
            step += 1
            Adam.update(p, learningRate: 1e-4, clipScale: 1, step: step, settings: AdamSettings())
        }
        return Double(p.count) / t
    }

    /// Binds `socket` on this host for a bench's own links: an ipc socket in a new temporary
    /// directory named after `name` (returned; the caller removes it) or a loopback tcp port (nil).
    static func bindLoopback(_ socket: Socket, _ transport: LocalCluster.Transport, name: String) throws -> String? {
        switch transport {
        case .ipc:
            let dir = NSTemporaryDirectory() + "\(name)-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try socket.bind("ipc://\(dir)/s")
            return dir
        case .tcp:
            try socket.bind("tcp://127.0.0.1:*")
            return nil
        }
    }

    /// One-way latency (64-byte ping-pong, best round trip / 2), bandwidth (1 MiB ping-pong:
    /// bytes / (best round trip / 2 − latency)) and the send path's cost per request (WireCodec
    /// encode + the send call of a forward request of 8 batches, best case) between two ZeroMQ
    /// PAIR sockets of this process.
    static func linkRate(_ transport: LocalCluster.Transport) throws -> (link: LinkModel, send: Double) {
        let context = try ZMQContext()
        let a = try Socket(context: context, type: .pair)
        defer { a.close() }
        let directory = try bindLoopback(a, transport, name: "thor-link")
        defer { if let directory { try? FileManager.default.removeItem(atPath: directory) } }
        return try pingPong(a, name: transport.rawValue, echoContext: context, namespace: nil)
    }

    /// The same ping-pong across an emulated node's link: the echo runs on a thread that joined
    /// the node's network namespace (setns) before making its own ZeroMQ context, so its I/O
    /// thread's tcp connection crosses the veth link and the bridge.
    static func emulatedNodeLinkRate() throws -> (link: LinkModel, send: Double) {
        let nodes = try EmulatedNodes(EmulatedNodes.Options(nodes: 1))
        defer { nodes.remove() }
        let context = try ZMQContext()
        let a = try Socket(context: context, type: .pair)
        defer { a.close() }
        try a.bind("tcp://\(nodes.coordinatorAddress):*")
        return try pingPong(a, name: ScalingConfiguration.emulatedNodesTransport, echoContext: nil, namespace: nodes.namespaces[0])
    }

    /// Ping-pong between `a` (bound) and an echo thread (in `namespace`, with its own context, when given).
    static func pingPong(_ a: Socket, name: String, echoContext: ZMQContext?, namespace: String?) throws -> (link: LinkModel, send: Double) {
        let endpoint = try a.lastEndpoint()
        let echo = Thread {
            if let namespace {
                let fd = open("/run/netns/\(namespace)", O_RDONLY)
                guard fd >= 0, joinNetworkNamespace(fd) else { if fd >= 0 { close(fd) }; return }
                close(fd)
            }
            guard let context = echoContext ?? (try? ZMQContext()),
                  let b = try? Socket(context: context, type: .pair) else { return }
            defer { b.close() }
            guard (try? b.connect(endpoint)) != nil else { return }
            while let frames = try? b.receive(timeout: 10) {
                if frames.first?.count == 0 { return }
                try? b.send(frames)
            }
        }
        echo.start()
        defer { try? a.send([Frame()], dontWait: true) }  // never blocks if the echo thread has gone
        func roundTrip(_ bytes: Int, _ count: Int) throws -> Double {
            let payload = [UInt8](repeating: 7, count: bytes)
            var best = Double.infinity
            for i in 0..<count {
                let t0 = now()
                try a.send([Frame(payload)])
                guard let reply = try a.receive(timeout: 10), reply.first?.count == bytes else {
                    throw ClusterError.launch("link probe over \(name): no echo")
                }
                if i > 0 { best = min(best, now() - t0) }
            }
            return best
        }
        let latency = try roundTrip(64, 400) / 2
        let big = 1 << 20
        let half = try roundTrip(big, 40) / 2
        // The coordinator's send path: encode + send of a forward request (8 batches of 16 × 64).
        var g = RandomGenerator(seed: 4)
        let batches = (0..<8).map { e -> ExpertBatch in
            let t = Tensor(shape: [16, 64]); g.fillNormal(t.pointer, count: t.count, std: 1)
            return ExpertBatch(expert: e, tokens: t)
        }
        let envelope = Envelope(requestID: 1, sender: "coordinator", session: 2,
                                message: .forward(layer: 0, training: true, batches: batches, replyDType: .f32))
        var send = Double.infinity
        for i in 0..<200 {
            let t0 = now()
            try a.send(WireCodec.encode(envelope).zmqFrames())
            let t = now() - t0
            guard let reply = try a.receive(timeout: 10), !reply.isEmpty else {
                throw ClusterError.launch("link probe over \(name): no echo")
            }
            if i > 0 { send = min(send, t) }
        }
        return (LinkModel(latency: latency, bandwidth: Double(big) / max(half - latency, 1e-9)), send)
    }
}

/// `setns(fd, CLONE_NEWNET)` for the calling thread (Glibc's Swift module does not export `setns`).
func joinNetworkNamespace(_ fd: Int32) -> Bool {
    typealias SetNS = @convention(c) (Int32, Int32) -> Int32
    guard let symbol = dlsym(nil, "setns") else { return false }  // nil: RTLD_DEFAULT
    let cloneNewNet: Int32 = 0x4000_0000
    return unsafeBitCast(symbol, to: SetNS.self)(fd, cloneNewNet) == 0
}
