import ThorExperts
import ThorModel
import ThorCluster

/// What a run will need, estimated from its configuration alone, before anything
/// is started: memory of the coordinator and of each expert worker, and whether the
/// worker count makes sense for the number of routed experts.
///
/// The figures are estimates (upper-leaning): every parameter with its gradient and
/// two Adam moments (16 bytes), plus the activations one batch of
/// `training.max_tokens_per_batch` padded tokens keeps for backward.
public struct ResourceEstimate: Sendable, CustomStringConvertible {
    /// Bytes of the coordinator process (with the experts when `workers == 0`).
    public var coordinatorBytes: Double
    /// Bytes of each expert worker (0 without workers).
    public var workerBytes: Double
    /// Expert-worker processes counted.
    public var workers: Int
    /// Routed experts over all MoE layers, and per MoE layer.
    public var experts: Int, expertsPerLayer: Int

    /// Everything on this machine: the coordinator and, when started locally, every worker.
    public func localBytes(externalWorkers: Bool) -> Double {
        coordinatorBytes + (externalWorkers ? 0 : Double(workers) * workerBytes)
    }

    public var description: String {
        workers == 0 ? "coordinator with in-process experts \(Self.format(coordinatorBytes))"
            : "coordinator \(Self.format(coordinatorBytes)), each of \(workers) workers \(Self.format(workerBytes))"
    }

    static func format(_ bytes: Double) -> String {
        bytes >= 1_073_741_824 ? "\(Self.round(bytes / 1_073_741_824)) GiB" : "\(Self.round(bytes / 1_048_576)) MiB"
    }
    static func round(_ x: Double) -> String {
        let r = (x * 10).rounded() / 10
        return r >= 100 ? String(Int(r)) : String(r)
    }

    /// The estimate for `c` with `workers` expert workers (`c.cluster.workers` when nil).
    public init(_ c: ThorConfiguration, workers: Int? = nil) {
        let m = c.model
        let d = Double(m.modelDim), f = Double(m.hiddenDim), h = Double(m.heads)
        let v = Double(m.vocabularySize > 0 ? m.vocabularySize : c.data.vocabularySize)
        let f1 = Double(m.activation.firstProjectionWidth(dFF: m.hiddenDim))
        let keys = TranslationModel.expertKeys(for: c)
        let moeLayers = Double(keys.count / max(1, c.routing.experts))
        let e = Double(c.routing.experts)
        let enc = Double(m.encoderLayers), dec = Double(m.decoderLayers)
        // Coordinator parameters: embeddings and output layer, attention, LayerNorms,
        // a dense FFN per layer (an upper bound for the shared part of MoE layers), routers.
        let ffn = d * f1 + f1 + f * d + d
        var params = 2 * v * d + v + enc * (4 * d * d + 8 * d + ffn) + dec * (8 * d * d + 14 * d + ffn)
        params += moeLayers * (d * e + e) * 2 + Double(max(1, c.routing.tasks)) * d * 2
        let expertParams = d * f1 + f1 + f * d + d
        // Activations kept for backward per padded token: per layer about a dozen [T, d]
        // tensors, the FFN's hidden tensors, attention probabilities over up to max_positions
        // keys; the output layer's logits, probabilities and their gradient.
        let tokens = Double(c.training.maxTokensPerBatch)
        let keysPerQuery = Double(min(m.maxPositions, c.data.maxLength))
        let perToken = enc * (12 * d + 2 * f1 + 2 * h * keysPerQuery) + dec * (18 * d + 2 * f1 + 4 * h * keysPerQuery) + 3 * v
        let expertRow = 2 * (2 * d + f1 + f)  // a routed row: forward kept tensors and backward temporaries
        let w = workers ?? c.cluster.workers
        self.workers = w
        experts = keys.count
        expertsPerLayer = c.routing.experts
        coordinatorBytes = 16 * params + 4 * tokens * perToken
        if w == 0 {
            coordinatorBytes += 16 * expertParams * Double(keys.count) + 4 * tokens * moeLayers * expertRow
            workerBytes = 0
        } else {
            let hosted = (Double(keys.count) / Double(w)).rounded(.up)
            workerBytes = 16 * expertParams * hosted + 4 * tokens * moeLayers * expertRow
        }
    }

    /// Refuses a run that cannot fit or whose worker count is absurd, before anything starts;
    /// `warn` gets a line when more workers are asked for than one MoE layer can keep busy.
    /// - Parameters:
    ///   - available: bytes this machine can give (default: MemAvailable).
    ///   - externalWorkers: the workers run elsewhere (`--bind`): only the coordinator counts here.
    public func check(available: Double = Double(WorkerLimits.availableMemoryBytes()), externalWorkers: Bool = false,
                      warn: (String) -> Void) throws {
        if workers > experts {
            throw TrainingError.invalidConfiguration(
                "cluster.workers is \(workers) but the model has only \(experts) routed experts "
                + "(\(expertsPerLayer) per MoE layer × \(experts / max(1, expertsPerLayer)) MoE layers): every worker beyond "
                + "\(experts) would host no expert; use at most \(experts) workers")
        }
        if workers > expertsPerLayer {
            warn("warning: \(workers) workers for \(expertsPerLayer) experts per MoE layer: at most \(expertsPerLayer) "
                 + "workers compute at once in a layer; the others wait (each hosts experts of other layers)")
        }
        let need = localBytes(externalWorkers: externalWorkers)
        if need > available {
            let who = externalWorkers || workers == 0 ? description
                : "\(description) = \(Self.format(need)) on this machine"
            throw TrainingError.invalidConfiguration(
                "this run needs an estimated \(who), but only \(Self.format(available)) of memory is available; "
                + "lower model.model_dim, model.hidden_dim, routing.experts, training.max_tokens_per_batch "
                + "or the number of workers")
        }
    }
}
