"""The transcript: the exact bytes of every handshake message so far, in order.

Signatures and Finished MACs cover its hash, so both sides must have seen byte-identical
messages; any edit in flight (a stripped cipher suite, a swapped key share) makes them differ.
The hash function is the chosen suite's, unknown until the ServerHello, so the bytes are kept;
once a hash is asked for, a running hash of that algorithm is started over the messages so far
and fed each message as it is appended; a digest finalizes a copy (never re-hashed from the start).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from tlsotp.handshake.suites import HashAlgorithm


class Transcript:
    def __init__(self) -> None:
        self._messages: list[bytes] = []
        #: The running hashes asked for so far (one per algorithm, normally just the suite's),
        #: each fed every message: a short list searched by identity (enum members are
        #: singletons), where a dict would call Enum.__hash__ in Python per lookup.
        self._running: list[tuple[HashAlgorithm, hashes.Hash]] = []

    def __deepcopy__(self, memo: dict[int, object]) -> Transcript:
        """A copy that goes on independently (hash objects copy, they do not pickle)."""
        twin = Transcript()
        twin._messages = list(self._messages)
        twin._running = [(algorithm, h.copy()) for algorithm, h in self._running]
        return twin

    def append(self, message: bytes) -> None:
        message = bytes(message)
        self._messages.append(message)
        for _, h in self._running:
            h.update(message)

    def digest(self, hash_: HashAlgorithm) -> bytes:
        """Transcript-Hash of everything appended so far."""
        for algorithm, h in self._running:
            if algorithm is hash_:
                return h.copy().finalize()
        h = hashes.Hash(hash_.new())
        for message in self._messages:
            h.update(message)
        self._running.append((hash_, h))
        return h.copy().finalize()

    @property
    def messages(self) -> tuple[bytes, ...]:
        return tuple(self._messages)
