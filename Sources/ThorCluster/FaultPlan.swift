/// The seam a fault injector plugs into (`ClusterCoordinator.faultHook`, off by default):
/// consulted before each request is sent, with where the run stands.

/// The phase of a training step a request belongs to.
public enum FaultPhase: String, Sendable, CaseIterable {
    case forward, backward, gradNorm = "grad-norm", step, export, `import`, assign, other
}

/// Where a request is about to go.
public struct FaultPoint: Sendable, Equatable {
    /// The optimizer step in progress (the step being computed; counts from 1).
    public var step: Int
    public var phase: FaultPhase
    /// The MoE layer of a forward/backward request.
    public var layer: Int?
    /// The worker the request is for.
    public var worker: String
    /// The exchange's name (as in errors: "Forward layer 2", "Step 7", …).
    public var operation: String

    public init(step: Int, phase: FaultPhase, layer: Int?, worker: String, operation: String) {
        self.step = step; self.phase = phase; self.layer = layer; self.worker = worker; self.operation = operation
    }
}

/// What the injector does to that request. (Killing or stopping a worker process is
/// done by the hook itself, e.g. `kill(pid, SIGKILL)`, before returning `.none`.)
public enum FaultAction: Sendable, Equatable {
    /// Send it as usual.
    case none
    /// Do not send it (a lost message: the worker stays alive and beating, the deadline catches it).
    case drop
    /// Flip one byte of the encoded frame (the worker must refuse it and change nothing).
    case corrupt
}
