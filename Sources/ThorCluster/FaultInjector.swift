import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A fault the injector applied.
public struct InjectedFault: Sendable, CustomStringConvertible {
    public var spec: FaultSpec
    /// The worker hit.
    public var worker: String
    public var step: Int
    public var phase: FaultPhase
    public var layer: Int?
    /// The request it was applied to (or before which the worker was hit).
    public var operation: String
    /// Monotonic time of the injection.
    public var injectedAt: Double
    /// Its position in the plan's resolved list.
    public var index: Int
    /// Why it could not be applied (e.g. no process to signal for an external worker); nil when applied.
    public var skipped: String?

    public var description: String {
        var s = "fault injected: \(spec.kind.rawValue) worker \(worker) at step \(step) \(phase.rawValue)"
        if let layer { s += " layer \(layer)" }
        s += " (\(operation))"
        switch spec.kind {
        case .hang, .partition: s += " for \(decimal(spec.durationSeconds, 2)) s"
        case .delay: s += ", held \(decimal(spec.delayMilliseconds, 0)) ms"
        default: break
        }
        if let skipped { s += "; not applied: \(skipped)" }
        return s
    }
}

/// Cuts a worker off from the coordinator both ways for a while. `InjectedPartitions`
/// emulates it inside the coordinator (every frame to or from the worker is dropped);
/// a driver that cuts a real link (a network namespace's veth set down) plugs in here.
public protocol PartitionDriver: AnyObject {
    /// Cuts `worker` off for `seconds`, healing by itself afterwards.
    func cut(worker: String, seconds: Double) throws
    /// Heals every cut now (the run ends).
    func healAll()
}

/// In-process partitions: the coordinator drops every frame to and from the worker
/// (`ClusterCoordinator.cutLinks`) until the cut heals. The worker keeps running and
/// beating into the void; the coordinator sees silence and declares it dead; after the
/// heal its beats arrive again and it rejoins with state transfer.
public final class InjectedPartitions: PartitionDriver {
    weak var coordinator: ClusterCoordinator?
    public init(coordinator: ClusterCoordinator) { self.coordinator = coordinator }
    public func cut(worker: String, seconds: Double) throws { coordinator?.cutLinks[worker] = monotonicSeconds() + seconds }
    public func healAll() { coordinator?.cutLinks.removeAll() }
}

/// The runtime's fault injector (off unless a plan is given): installed as the coordinator's
/// `faultHook`, it fires each planned fault at the first request matching its step, phase
/// and (if given) layer and worker: kill (SIGKILL), hang (SIGSTOP, SIGCONT after the
/// duration), delay, drop or corrupt the request or its reply, or partition the worker. Each fault fires
/// once and is reported to `onInjected`. Use from the coordinator's thread.
public final class FaultInjector {
    public let faults: [FaultSpec]
    public private(set) var injected: [InjectedFault] = []
    /// Called for every fault applied (or skipped, with the reason).
    public var onInjected: ((InjectedFault) -> Void)?
    /// The process id of a worker (nil: not a local child, so it cannot be signalled).
    public var processID: (String) -> pid_t?
    public var partitions: PartitionDriver?
    private var fired: [Bool]
    private let stopped = StoppedProcesses()

    public init(faults: [FaultSpec], processID: @escaping (String) -> pid_t?, partitions: PartitionDriver?) {
        self.faults = faults
        self.processID = processID
        self.partitions = partitions
        fired = Array(repeating: false, count: faults.count)
    }

    /// An injector for a local cluster: it signals its children; partitions are real (the node's
    /// link taken down, `LinkPartitions`) when the workers run on emulated nodes, else in-process
    /// (`InjectedPartitions`).
    public convenience init(plan: FaultPlan, cluster: LocalCluster) {
        let partitions: PartitionDriver
        if let links = cluster.links {
            partitions = LinkPartitions(links: links, node: { [weak cluster] w in cluster?.node(of: w) })
        } else {
            partitions = InjectedPartitions(coordinator: cluster.coordinator)
        }
        self.init(faults: plan.resolved(workers: cluster.workerIDs),
                  processID: { [weak cluster] w in cluster.flatMap { $0.workerIDs.contains(w) ? $0.processID(of: w) : nil } },
                  partitions: partitions)
    }

    /// Makes this the coordinator's fault hook.
    public func install(on coordinator: ClusterCoordinator) {
        coordinator.faultHook = { [weak self] point in self?.action(at: point) ?? .none }
    }

    /// Faults not fired (their step and phase never came, e.g. a run shorter than the plan).
    public var unfired: [FaultSpec] { zip(faults, fired).filter { !$0.1 }.map(\.0) }

    /// What to do with the request at `point` (applying process and link faults on the way).
    public func action(at point: FaultPoint) -> FaultAction {
        var result = FaultAction.none
        for (i, f) in faults.enumerated() where !fired[i] && f.matches(point) {
            fired[i] = true
            let worker = f.worker ?? point.worker
            var skipped: String?
            switch f.kind {
            case .kill:
                if let pid = processID(worker), pid > 0 { kill(pid, SIGKILL) } else { skipped = "worker \(worker) is not a local process" }
            case .hang:
                if let pid = processID(worker), pid > 0 {
                    stopped.stop(pid)
                    DispatchQueue.global().asyncAfter(deadline: .now() + f.durationSeconds) { [stopped] in stopped.resume(pid) }
                } else { skipped = "worker \(worker) is not a local process" }
            case .partition:
                if let partitions {
                    do { try partitions.cut(worker: worker, seconds: f.durationSeconds) } catch { skipped = "\(error)" }
                } else { skipped = "no partition driver" }
            case .delay: result = .delay(f.delayMilliseconds / 1000)
            case .drop: result = .drop
            case .corrupt: result = .corrupt
            }
            if f.direction == .reply { result = result.onReply }
            let e = InjectedFault(spec: f, worker: worker, step: point.step, phase: point.phase, layer: point.layer,
                                  operation: point.operation, injectedAt: monotonicSeconds(), index: i, skipped: skipped)
            injected.append(e)
            onInjected?(e)
        }
        return result
    }

    /// Ends every fault in force: continues stopped workers, heals partitions. Call when the run ends.
    public func finish() {
        stopped.resumeAll()
        partitions?.healAll()
    }

    deinit { finish() }

    /// Damages an encoded frame so that no receiver can decode it: the first byte (the tag
    /// of the envelope's first field) gets wire type 7, which no protobuf field has. The
    /// frame layout has no checksum, so a flip inside tensor bytes would go unseen; this
    /// stands for damage the receiver detects, which is what the recovery path handles.
    /// Works on the first part of a message whatever follows it.
    public static func corrupt(_ frame: UnsafeMutableRawBufferPointer) {
        guard frame.count > 0 else { return }
        frame[0] = frame[0] | 0x07
    }
}

/// Processes the injector stopped (SIGSTOP), continued by a timer or when the run ends.
final class StoppedProcesses: @unchecked Sendable {
    private let lock = NSLock()
    private var pids: Set<pid_t> = []

    func stop(_ pid: pid_t) {
        lock.withLock { _ = pids.insert(pid) }
        kill(pid, SIGSTOP)
    }

    func resume(_ pid: pid_t) {
        if lock.withLock({ pids.remove(pid) != nil }) { kill(pid, SIGCONT) }
    }

    func resumeAll() {
        for p in lock.withLock({ () -> Set<pid_t> in defer { pids.removeAll() }; return pids }) { kill(p, SIGCONT) }
    }
}
