"""The transcript: the exact bytes of every handshake message so far, in order.

Signatures and Finished MACs cover its hash, so both sides must have seen byte-identical
messages; any edit in flight (a stripped cipher suite, a swapped key share) makes them differ.
The hash function is the chosen suite's, unknown until the ServerHello, so the bytes are kept
and hashed on demand (a handshake is a few kilobytes).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from tlsotp.handshake.suites import HashAlgorithm


class Transcript:
    def __init__(self) -> None:
        self._messages: list[bytes] = []

    def append(self, message: bytes) -> None:
        self._messages.append(bytes(message))

    def digest(self, hash_: HashAlgorithm) -> bytes:
        """Transcript-Hash of everything appended so far."""
        h = hashes.Hash(hash_.new())
        for message in self._messages:
            h.update(message)
        return h.finalize()

    @property
    def messages(self) -> tuple[bytes, ...]:
        return tuple(self._messages)
