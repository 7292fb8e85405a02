import ThorTensor
import ThorExperts
import ThorModel

/// The first encoder MoE layer of a stack, run the way the Transformer runs it: the task level
/// on the layer's input first (task-predictor variants), then the layer with that `r`; backward:
/// the layer, then the task level with the layer's `∂L/∂r`. What the benchmarks time.
final class FirstMoELayer {
    let stack: MoEStack
    var layer: MoELayer { stack.layers[0] }

    init(_ stack: MoEStack) { self.stack = stack }

    func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor {
        var l = layout
        if let tl = stack.taskLevel { l.taskRepresentation = try tl.forward(x, layout: layout, training: training) }
        return try layer.forward(x, layout: l, training: training)
    }

    func backward(_ gradOutput: Tensor) throws -> Tensor {
        let g = try layer.backward(gradOutput)
        if let tl = stack.taskLevel, let dr = g.taskRepresentation {
            try tl.backward(representationGradient: dr, into: g.input)
        }
        return g.input
    }
}
