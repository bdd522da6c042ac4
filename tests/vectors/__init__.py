"""Published handshake test vectors, the generator that writes them, and the deterministic
PKI and in-memory pump that both the generator and the handshake tests use."""
