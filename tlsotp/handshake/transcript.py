"""The transcript: the exact bytes of every handshake message so far, in order.

Signatures and Finished MACs cover its hash, so both sides must have seen byte-identical
messages; any edit in flight (a stripped cipher suite, a swapped key share) makes them differ.
The hash function is the chosen suite's, unknown until the ServerHello, so the bytes are kept;
once a hash is asked for, a running hash of that algorithm is kept and each digest feeds it only
the messages appended since, then finalizes a copy (incremental, never re-hashed from the start).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from tlsotp.handshake.suites import HashAlgorithm


class Transcript:
    def __init__(self) -> None:
        self._messages: list[bytes] = []
        #: Per algorithm: a running hash and how many messages it has absorbed.
        self._running: dict[HashAlgorithm, tuple[hashes.Hash, int]] = {}

    def __deepcopy__(self, memo: dict[int, object]) -> Transcript:
        """A copy that goes on independently (hash objects copy, they do not pickle)."""
        twin = Transcript()
        twin._messages = list(self._messages)
        twin._running = {algorithm: (h.copy(), n) for algorithm, (h, n) in self._running.items()}
        return twin

    def append(self, message: bytes) -> None:
        self._messages.append(bytes(message))

    def digest(self, hash_: HashAlgorithm) -> bytes:
        """Transcript-Hash of everything appended so far."""
        h, absorbed = self._running.get(hash_) or (hashes.Hash(hash_.new()), 0)
        for message in self._messages[absorbed:]:
            h.update(message)
        self._running[hash_] = (h, len(self._messages))
        return h.copy().finalize()

    @property
    def messages(self) -> tuple[bytes, ...]:
        return tuple(self._messages)
