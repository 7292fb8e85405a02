import ThorTensor
import ThorModel

extension ThorConfiguration {
    /// What `thor train` runs without `--config`: a small THOR top-p model on the built-in
    /// synthetic multi-domain corpus, sized to train in a few minutes on a 2-core machine
    /// over a local cluster of 2 expert workers. `thor train --print-config` prints it.
    public static var quickstart: ThorConfiguration {
        var c = ThorConfiguration()
        c.model = TransformerConfiguration(vocabularySize: 0, modelDim: 64, hiddenDim: 128, heads: 4,
                                           encoderLayers: 2, decoderLayers: 2, activation: .relu,
                                           dropout: 0.1, attentionDropout: 0.0, maxPositions: 128)
        c.routing.variant = .thorTopP
        c.routing.experts = 8
        c.routing.threshold = 0.5
        c.training.learningRate = 2e-3
        c.training.warmupSteps = 200
        c.training.maxTokensPerBatch = 2048
        c.training.maxSteps = 1200
        c.training.devInterval = 400
        c.training.checkpointInterval = 400
        c.training.logInterval = 20
        c.cluster.workers = 2
        c.cluster.expertThreads = 1
        c.data.vocabularySize = 1000
        c.data.syntheticPairs = 20_000
        c.data.syntheticEvalPairsPerTask = 100
        c.evaluation.beamSize = 1
        c.evaluation.devSentences = 200
        return c
    }
}
