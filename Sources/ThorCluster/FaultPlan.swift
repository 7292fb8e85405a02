import Foundation
import ThorTensor

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
    /// Do not send it (a lost message: the worker stays alive and beating; the coordinator's
    /// retry timer resends it, and the worker answers a repeated request id from its reply cache).
    case drop
    /// Make the frame undecodable (`FaultInjector.corrupt`): the worker must refuse it and change nothing.
    case corrupt
    /// Hold the request this many seconds before sending it (the coordinator keeps serving beats meanwhile).
    case delay(Double)
    /// Send the request, then lose its reply (the worker applied it: the coordinator's retry
    /// timer resends it, and the worker must answer from its reply cache, not apply it again).
    case dropReply
    /// Send the request, then damage its reply on arrival so that it cannot be decoded (the
    /// coordinator asks again at once; the worker answers from its reply cache).
    case corruptReply
    /// Send the request, then hold its reply this many seconds before reading it.
    case delayReply(Double)

    /// The same fault on the reply instead of the request (`none` and reply faults unchanged).
    public var onReply: FaultAction {
        switch self {
        case .drop: return .dropReply
        case .corrupt: return .corruptReply
        case .delay(let s): return .delayReply(s)
        default: return self
        }
    }

    /// Whether the request itself goes out untouched (the fault, if any, acts on its reply).
    public var sendsRequest: Bool {
        switch self {
        case .none, .dropReply, .corruptReply, .delayReply: return true
        default: return false
        }
    }
}

/// Which message of an exchange a message fault (delay, drop, corrupt) hits.
public enum FaultDirection: String, Sendable, CaseIterable, Codable {
    /// The coordinator's request, on its way to the worker.
    case request
    /// The worker's reply, on its way back (after the worker applied the request).
    case reply
}

// MARK: - The fault plan file

/// The kinds of fault the injector applies.
public enum FaultKind: String, Sendable, CaseIterable, Codable {
    /// SIGKILL the worker process.
    case kill
    /// SIGSTOP the worker process for `duration_s`, then SIGCONT.
    case hang
    /// Hold the request (with `direction: reply`, its reply) `delay_ms` milliseconds.
    case delay
    /// Lose the request (with `direction: reply`, its reply).
    case drop
    /// Flip bytes of the request's frame (with `direction: reply`, the reply's) so that it cannot be decoded.
    case corrupt
    /// Cut the worker off from the coordinator both ways for `duration_s` (see `PartitionDriver`).
    case partition

    /// Whether the fault acts on the worker (process or link) rather than on one message.
    public var targetsWorker: Bool { self == .kill || self == .hang || self == .partition }
}

/// One fault: what, and when (the first request matching step, phase and, if given, layer and worker).
public struct FaultSpec: Sendable, Equatable, CustomStringConvertible {
    public var kind: FaultKind
    public var step: Int
    public var phase: FaultPhase
    public var layer: Int?
    /// The worker to hit; nil: the worker of the first matching request.
    public var worker: String?
    /// Seconds a hang or partition lasts.
    public var durationSeconds: Double
    /// Milliseconds a delayed message is held.
    public var delayMilliseconds: Double
    /// The message a delay, drop or corrupt hits (worker faults ignore it).
    public var direction: FaultDirection

    public init(kind: FaultKind, step: Int, phase: FaultPhase, layer: Int? = nil, worker: String? = nil,
                durationSeconds: Double = 1, delayMilliseconds: Double = 200, direction: FaultDirection = .request) {
        self.kind = kind; self.step = step; self.phase = phase; self.layer = layer; self.worker = worker
        self.durationSeconds = durationSeconds; self.delayMilliseconds = delayMilliseconds; self.direction = direction
    }

    public var description: String {
        var s = "\(kind.rawValue)"
        if direction == .reply && !kind.targetsWorker { s += " reply" }
        if let worker { s += " \(worker)" }
        s += " at step \(step) \(phase.rawValue)"
        if let layer { s += " layer \(layer)" }
        switch kind {
        case .hang, .partition: s += " for \(decimal(durationSeconds, 2)) s"
        case .delay: s += " by \(decimal(delayMilliseconds, 0)) ms"
        default: break
        }
        return s
    }

    /// Whether a request at `point` triggers this fault: a message fault hits a request to its
    /// worker; a worker fault (kill, hang, partition) fires at the first request of the step and
    /// phase (and layer), whoever it is for.
    public func matches(_ point: FaultPoint) -> Bool {
        point.step == step && point.phase == phase && (layer == nil || point.layer == layer)
            && (worker == nil || kind.targetsWorker || point.worker == worker)
    }
}

/// Faults drawn at random from a seed: the same seed, workers and step range give the same faults.
public struct RandomFaults: Sendable, Equatable {
    public var seed: UInt64
    public var count: Int
    public var kinds: [FaultKind]
    public var firstStep: Int
    public var lastStep: Int
    public var phases: [FaultPhase]
    public var durationSeconds: Double
    public var delayMilliseconds: Double

    public init(seed: UInt64, count: Int, kinds: [FaultKind] = [.kill], firstStep: Int = 2, lastStep: Int,
                phases: [FaultPhase] = [.forward, .backward, .step], durationSeconds: Double = 1, delayMilliseconds: Double = 200) {
        self.seed = seed; self.count = count; self.kinds = kinds; self.firstStep = firstStep; self.lastStep = lastStep
        self.phases = phases; self.durationSeconds = durationSeconds; self.delayMilliseconds = delayMilliseconds
    }

    /// The faults, in step order (at most one per step and phase; workers drawn from `workers`).
    public func draw(workers: [String]) -> [FaultSpec] {
        var rng = RandomGenerator(seed: seed ^ 0x7468_6f72_6368_616f)  // "thorchao"
        var faults: [FaultSpec] = []
        var used = Set<String>()
        var attempts = 0
        while faults.count < count && attempts < count * 50 {
            attempts += 1
            let step = firstStep + rng.nextInt(below: lastStep - firstStep + 1)
            let phase = phases[rng.nextInt(below: phases.count)]
            let kind = kinds[rng.nextInt(below: kinds.count)]
            let worker = workers.isEmpty ? nil : workers[rng.nextInt(below: workers.count)]
            guard used.insert("\(step) \(phase.rawValue)").inserted else { continue }
            faults.append(FaultSpec(kind: kind, step: step, phase: phase, worker: worker,
                                    durationSeconds: durationSeconds, delayMilliseconds: delayMilliseconds))
        }
        return faults.sorted { ($0.step, FaultPhase.allCases.firstIndex(of: $0.phase)!) < ($1.step, FaultPhase.allCases.firstIndex(of: $1.phase)!) }
    }
}

/// A fault plan (`thor train --fault-plan FILE`, a `thor chaos` scenario): fixed faults and
/// optionally random ones. JSON, parsed strictly; every error names the field.
///
///     {"faults": [{"kind": "kill", "step": 3, "phase": "forward", "worker": "w1"},
///                 {"kind": "hang", "step": 5, "phase": "backward", "duration_s": 1.0}],
///      "random": {"seed": 7, "count": 2, "kinds": ["kill", "hang"], "first_step": 2, "last_step": 10}}
///
/// A scenario file may also hold `name`, `description`, `workers`, `steps` and `replicas`.
public struct FaultPlan: Sendable, Equatable {
    public var faults: [FaultSpec]
    public var random: RandomFaults?
    /// Scenario fields (used by `thor chaos`; ignored by `thor train --fault-plan`).
    public var name: String?
    public var description: String?
    public var workers: Int?
    public var steps: Int?
    public var replicas: Int?

    public init(faults: [FaultSpec] = [], random: RandomFaults? = nil) { self.faults = faults; self.random = random }

    /// Every fault, the random ones drawn for `workers`, in step order.
    public func resolved(workers: [String]) -> [FaultSpec] {
        let all = faults + (random?.draw(workers: workers) ?? [])
        return all.enumerated().sorted { ($0.element.step, $0.offset) < ($1.element.step, $1.offset) }.map(\.element)
    }

    /// Reads and checks a plan file.
    public init(contentsOf path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FaultPlanError(path: path, field: "", message: "cannot read the file")
        }
        do { try self.init(json: data) } catch var e as FaultPlanError {
            e.path = path
            throw e
        } catch let e as ConfigurationError {
            throw FaultPlanError(path: path, field: e.path, message: e.message)
        }
    }

    /// Parses plan JSON (strict: unknown fields, wrong types and out-of-range values are refused by name).
    public init(json data: Data) throws {
        guard case .object(let root) = try JSONValue.parse(data) else {
            throw FaultPlanError(field: "", message: "a fault plan is a JSON object with \"faults\" and/or \"random\"")
        }
        let r = Fields(root, at: "")
        try r.only(["faults", "random", "name", "description", "workers", "steps", "replicas"])
        faults = []
        if let list = r.raw("faults") {
            guard case .array(let items) = list else { throw FaultPlanError(field: "faults", message: "must be an array, got \(list.typeName)") }
            for (i, item) in items.enumerated() {
                let at = "faults[\(i)]"
                guard case .object(let o) = item else { throw FaultPlanError(field: at, message: "must be an object, got \(item.typeName)") }
                let f = Fields(o, at: at)
                try f.only(["kind", "step", "phase", "layer", "worker", "duration_s", "delay_ms", "direction"])
                let kind = try f.enumerated("kind", FaultKind.self, required: true)!
                let spec = FaultSpec(kind: kind, step: try f.int("step", min: 1, required: true)!,
                                     phase: try f.enumerated("phase", FaultPhase.self) ?? .forward,
                                     layer: try f.int("layer", min: 0), worker: try f.string("worker"),
                                     durationSeconds: try f.number("duration_s", min: 0.01, max: 600) ?? 1,
                                     delayMilliseconds: try f.number("delay_ms", min: 0, max: 600_000) ?? 200,
                                     direction: try f.enumerated("direction", FaultDirection.self) ?? .request)
                if kind.targetsWorker, o["direction"] != nil {
                    throw FaultPlanError(field: at + ".direction", message: "only delay, drop and corrupt hit one message (this fault is \(kind.rawValue), which acts on the worker)")
                }
                if kind != .hang && kind != .partition, o["duration_s"] != nil {
                    throw FaultPlanError(field: at + ".duration_s", message: "only hang and partition last a duration (this fault is \(kind.rawValue))")
                }
                if kind != .delay, o["delay_ms"] != nil {
                    throw FaultPlanError(field: at + ".delay_ms", message: "only delay holds a message (this fault is \(kind.rawValue))")
                }
                faults.append(spec)
            }
        }
        if let rv = r.raw("random") {
            guard case .object(let o) = rv else { throw FaultPlanError(field: "random", message: "must be an object, got \(rv.typeName)") }
            let f = Fields(o, at: "random")
            try f.only(["seed", "count", "kinds", "phases", "first_step", "last_step", "duration_s", "delay_ms"])
            let kinds = try f.enumeratedList("kinds", FaultKind.self) ?? [.kill]
            let phases = try f.enumeratedList("phases", FaultPhase.self) ?? [.forward, .backward, .step]
            let first = try f.int("first_step", min: 1) ?? 2
            let last = try f.int("last_step", min: 1, required: true)!
            guard last >= first else { throw FaultPlanError(field: "random.last_step", message: "must be ≥ first_step (\(first)), got \(last)") }
            let count = try f.int("count", min: 1, max: 1000) ?? 1
            guard count <= (last - first + 1) * phases.count else {
                throw FaultPlanError(field: "random.count", message: "\(count) faults do not fit in steps \(first)…\(last) × \(phases.count) phases (at most one per step and phase)")
            }
            random = RandomFaults(seed: UInt64(try f.int("seed", min: 0, required: true)!), count: count, kinds: kinds,
                                  firstStep: first, lastStep: last, phases: phases,
                                  durationSeconds: try f.number("duration_s", min: 0.01, max: 600) ?? 1,
                                  delayMilliseconds: try f.number("delay_ms", min: 0, max: 600_000) ?? 200)
        }
        guard !faults.isEmpty || random != nil else {
            throw FaultPlanError(field: "", message: "the plan has no faults: give \"faults\" (a list) or \"random\"")
        }
        name = try r.string("name")
        description = try r.string("description")
        workers = try r.int("workers", min: 1, max: 64)
        steps = try r.int("steps", min: 1)
        replicas = try r.int("replicas", min: 1, max: 64)
    }
}

/// A plan file that cannot be used: which file, which field, what is wrong.
public struct FaultPlanError: Error, CustomStringConvertible, Equatable {
    public var path: String?
    public var field: String
    public var message: String
    public init(path: String? = nil, field: String, message: String) { self.path = path; self.field = field; self.message = message }
    public var description: String {
        let file = path.map { "fault plan \($0)" } ?? "fault plan"
        return field.isEmpty ? "\(file): \(message)" : "\(file): field `\(field)`: \(message)"
    }
}

/// Typed, range-checked access to one JSON object's fields, errors naming the field.
private struct Fields {
    let o: [String: JSONValue]
    let at: String
    init(_ o: [String: JSONValue], at: String) { self.o = o; self.at = at }

    func path(_ k: String) -> String { at.isEmpty ? k : "\(at).\(k)" }
    func raw(_ k: String) -> JSONValue? { o[k] }

    func only(_ allowed: [String]) throws {
        for k in o.keys.sorted() where !allowed.contains(k) {
            throw FaultPlanError(field: path(k), message: "unknown field (allowed: \(allowed.joined(separator: ", ")))")
        }
    }

    func missing(_ k: String) -> FaultPlanError { FaultPlanError(field: path(k), message: "is required") }

    func number(_ k: String, min: Double, max: Double = .infinity, required: Bool = false) throws -> Double? {
        guard let v = o[k], v != .null else { if required { throw missing(k) }; return nil }
        guard case .number(let x) = v, x.isFinite else { throw FaultPlanError(field: path(k), message: "must be a number, got \(v.typeName)") }
        guard x >= min, x <= max else { throw FaultPlanError(field: path(k), message: "must be in \(decimal(min, 2))…\(decimal(max, 2)), got \(x)") }
        return x
    }

    func int(_ k: String, min: Int, max: Int = Int(Int32.max), required: Bool = false) throws -> Int? {
        guard let v = o[k], v != .null else { if required { throw missing(k) }; return nil }
        guard case .number(let x) = v, x == x.rounded(), abs(x) < 1e15 else {
            throw FaultPlanError(field: path(k), message: "must be an integer, got \(v.typeName == "number" ? "\(v)" : v.typeName)")
        }
        guard Int(x) >= min, Int(x) <= max else { throw FaultPlanError(field: path(k), message: "must be in \(min)…\(max), got \(Int(x))") }
        return Int(x)
    }

    func string(_ k: String) throws -> String? {
        guard let v = o[k], v != .null else { return nil }
        guard case .string(let s) = v, !s.isEmpty else { throw FaultPlanError(field: path(k), message: "must be a non-empty string, got \(v.typeName)") }
        return s
    }

    func enumerated<E: RawRepresentable & CaseIterable>(_ k: String, _: E.Type, required: Bool = false) throws -> E? where E.RawValue == String {
        guard let v = o[k], v != .null else { if required { throw missing(k) }; return nil }
        return try parse(v, path(k), E.self)
    }

    func enumeratedList<E: RawRepresentable & CaseIterable>(_ k: String, _: E.Type) throws -> [E]? where E.RawValue == String {
        guard let v = o[k], v != .null else { return nil }
        guard case .array(let items) = v, !items.isEmpty else { throw FaultPlanError(field: path(k), message: "must be a non-empty array") }
        return try items.enumerated().map { try parse($1, path(k) + "[\($0)]", E.self) }
    }

    private func parse<E: RawRepresentable & CaseIterable>(_ v: JSONValue, _ p: String, _: E.Type) throws -> E where E.RawValue == String {
        let names = E.allCases.map(\.rawValue).joined(separator: ", ")
        guard case .string(let s) = v else { throw FaultPlanError(field: p, message: "must be one of \(names), got \(v.typeName)") }
        guard let e = E(rawValue: s) else { throw FaultPlanError(field: p, message: "must be one of \(names), got \"\(s)\"") }
        return e
    }
}
