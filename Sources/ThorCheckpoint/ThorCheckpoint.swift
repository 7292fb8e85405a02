// ThorCheckpoint module: see docs/architecture.md
