import ThorTensor

/// Weights of the auxiliary losses and label smoothing (the `losses` section, SPEC §3).
/// Defaults: the property initializers (the only place they are written).
public struct LossConfiguration: ConfigurationSection {
    /// α, weight of `L_task`.
    public var alpha: Float = 1e-2
    /// β, weight of `L_task_lb`.
    public var beta: Float = 1e-2
    /// γ, weight of `L_tok_lb`.
    public var gamma: Float = 1e-2
    /// δ, weight of `L_dyn` (top-p only).
    public var delta: Float = 1e-4
    /// ε of the label-smoothed cross-entropy `L_mt`.
    public var labelSmoothing: Float = 0.1

    public init() {}

    /// The defaults with some weights replaced.
    public init(alpha: Float = LossConfiguration().alpha, beta: Float = LossConfiguration().beta,
                gamma: Float = LossConfiguration().gamma, delta: Float = LossConfiguration().delta,
                labelSmoothing: Float = LossConfiguration().labelSmoothing) {
        self.alpha = alpha; self.beta = beta; self.gamma = gamma; self.delta = delta; self.labelSmoothing = labelSmoothing
    }

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case alpha, beta, gamma, delta, labelSmoothing = "label_smoothing"
    }

    public func validate(path: String = "losses") throws {
        for (k, v) in [(CodingKeys.alpha, alpha), (.beta, beta), (.gamma, gamma), (.delta, delta)] {
            try Check.require(v >= 0 && v.isFinite, "\(path).\(k.stringValue)", "must be a finite number ≥ 0, got \(v)")
        }
        try Check.require(labelSmoothing >= 0 && labelSmoothing < 1, "\(path).\(CodingKeys.labelSmoothing.stringValue)",
                          "must be in [0, 1), got \(labelSmoothing)")
    }
}
