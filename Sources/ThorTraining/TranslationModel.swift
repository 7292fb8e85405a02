import ThorTensor
import ThorExperts
import ThorModel

/// A THOR-MoE translation model as the coordinator sees it: the network (the encoder-decoder
/// `Transformer` or the decoder-only `PrefixLMTransformer`, by `model.architecture`: embeddings,
/// attention, LayerNorms, output layer), its MoE
/// layers with both routing levels, and the expert backend that runs the routed
/// experts (in this process or on expert workers).
public final class TranslationModel {
    /// The resolved configuration (vocabulary size and task count filled in).
    public let configuration: ThorConfiguration
    /// The network `model.architecture` names.
    public let network: TranslationNetwork
    /// The encoder-decoder network (nil for a decoder-only model).
    public var transformer: Transformer? { network as? Transformer }
    public let moe: MoEStack
    public var backend: ExpertBackend { moe.backend }

    /// Every coordinator-side parameter in a fixed order (MoE routing parameters included;
    /// routed experts live in the backend).
    public var parameters: [Parameter] { network.parameters }

    /// The experts every backend for `configuration` must host, in canonical order.
    public static func expertKeys(for configuration: ThorConfiguration) -> [ExpertKey] {
        MoEStack.expertKeys(model: configuration.model, routing: configuration.routing)
    }

    /// The routed experts' shape, activation, initialization seed and Adam settings.
    public static func expertSpec(for configuration: ThorConfiguration) -> ExpertSpec {
        MoEStack.expertSpec(model: configuration.model, seed: configuration.training.seed ^ 0xE8E7,
                            adam: configuration.training.adam)
    }

    /// Builds the model with initial weights from `training.seed`. The backend must host
    /// `expertKeys(for:)` with `expertSpec(for:)`.
    public init(configuration: ThorConfiguration, backend: ExpertBackend) throws {
        try configuration.validate()
        guard configuration.model.vocabularySize > 0 else {
            throw TrainingError.invalidConfiguration("model.vocabulary_size is 0: resolve it from the tokenizer first")
        }
        guard backend.spec == Self.expertSpec(for: configuration) else {
            throw TrainingError.invalidConfiguration("the expert backend's spec does not match the configuration")
        }
        self.configuration = configuration
        let seed = configuration.training.seed
        let stack = try MoEStack(model: configuration.model, routing: configuration.routing,
                                 losses: configuration.losses, backend: backend, seed: seed ^ 0x30E)
        moe = stack
        network = try TranslationNetworks.make(configuration: configuration.model, seed: seed, taskLevel: stack.taskLevel,
                                               makeFeedForward: { side, i in stack.sublayer(side: side, layerIndex: i) })
        network.labelSmoothing = configuration.losses.labelSmoothing
    }

    /// Zeroes the coordinator's gradients and drops the experts' gradients and kept activations.
    public func zeroGradients() throws {
        network.zeroGradients()
        try backend.zeroGradients()
    }
}

/// Errors of training, checkpoints and evaluation.
public enum TrainingError: Error, CustomStringConvertible, Equatable {
    case invalidConfiguration(String)
    case checkpoint(String)
    case data(String)
    /// A non-finite loss or gradient norm at `step`, with the first tensor holding a non-finite value.
    case nonFinite(step: Int, quantity: String, tensor: String)
    /// A save directory that cannot take this run.
    case runDirectory(String)
    /// Experts with no replica left, and the policy said stop (or waiting/restoring failed).
    case expertsLost(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let m): return "invalid configuration: \(m)"
        case .checkpoint(let m): return "checkpoint: \(m)"
        case .data(let m): return "data: \(m)"
        case .runDirectory(let m): return m
        case .nonFinite(let s, let q, let t):
            return "the \(q) is not finite at step \(s) (\(t)); training stopped without a checkpoint of this step; "
                + "lower training.learning_rate or raise training.warmup_steps"
        case .expertsLost(let m): return m
        }
    }
}
