// ThorTransport module: see docs/architecture.md
