// ThorCluster module: see docs/architecture.md
