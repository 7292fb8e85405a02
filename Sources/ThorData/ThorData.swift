// ThorData module: see docs/architecture.md
