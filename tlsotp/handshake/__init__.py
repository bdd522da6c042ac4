"""The handshake and record layer: sans-I/O state machines, no reactor."""
