// ThorTraining: the training loop, run checkpoints and evaluation (see docs/architecture.md).
