"""Bot engines: the built-in rule engine and the MCP Engine's gRPC client."""
