// ThorWire module: see docs/architecture.md
