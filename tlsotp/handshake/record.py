"""The record layer: AEAD protection of application data and late alerts, one direction each.

Per direction there is a key, a 12-byte static IV and an implicit 64-bit sequence number that
starts at 0 and counts every protected record. Nothing about the sequence travels on the
wire: the receiver's counter must equal the sender's, so a dropped, replayed or reordered
record changes the nonce and fails authentication (``bad_record_mac``).

    nonce = iv XOR (seq as 8 bytes big-endian, left-padded with 4 zero bytes)
    aad   = u8 content_type || u16 length(ciphertext)     (3 bytes; ciphertext includes the tag)

Binding the content type stops an attacker from relabelling an alert as data or the reverse;
binding the length is belt and braces (the netstring already delimits the frame).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.frames import ContentType
from tlsotp.handshake.keyschedule import IV_LENGTH, TrafficKeys
from tlsotp.handshake.limits import AEAD_TAG_LENGTH, MAX_PLAINTEXT, RECORD_LIMIT
from tlsotp.handshake.suites import Aead


def record_nonce(iv: bytes, seq: int) -> bytes:
    """TLS 1.3's per-record nonce (RFC 8446 section 5.3)."""
    if len(iv) != IV_LENGTH:
        raise ValueError(f"IV must be {IV_LENGTH} bytes")
    if not 0 <= seq < 2**64:
        raise ValueError("sequence number must fit in 64 bits")
    # The IV as a 96-bit integer XOR the (zero-padded) sequence number: the same 12 bytes as a
    # byte-by-byte XOR, in two C calls instead of a generator step per byte.
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(IV_LENGTH, "big")


def record_aad(content_type: ContentType, ciphertext_length: int) -> bytes:
    """u8 content_type || u16 length, as Writer().u8().u16() writes them."""
    return content_type.to_bytes(1, "big") + ciphertext_length.to_bytes(2, "big")


def _cipher(aead: Aead, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if len(key) != aead.key_length:
        raise ValueError(f"{aead.value} needs a {aead.key_length}-byte key")
    if aead is Aead.CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    return AESGCM(key)


class _Direction:
    def __init__(self, aead: Aead, keys: TrafficKeys, record_limit: int) -> None:
        self._cipher = _cipher(aead, keys.key)
        self._iv = keys.iv
        self._seq = 0
        self._limit = record_limit

    @property
    def sequence_number(self) -> int:
        """The sequence number the next record in this direction will use."""
        return self._seq

    @property
    def records_left(self) -> int:
        return self._limit - self._seq


class RecordSealer(_Direction):
    """Protects the records one side sends."""

    def __init__(self, aead: Aead, keys: TrafficKeys, *, record_limit: int = RECORD_LIMIT) -> None:
        super().__init__(aead, keys, record_limit)

    def seal(self, content_type: ContentType, plaintext: bytes) -> bytes:
        """Ciphertext for the next record; refuses to go past the record limit (nonce reuse)."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"record plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        if self._seq >= self._limit:
            raise AlertError(Alert.internal_error, "record sequence limit reached; close and reconnect")
        aad = record_aad(content_type, len(plaintext) + AEAD_TAG_LENGTH)
        ciphertext = self._cipher.encrypt(record_nonce(self._iv, self._seq), plaintext, aad)
        self._seq += 1
        return ciphertext


class RecordOpener(_Direction):
    """Checks and decrypts the records one side receives, in order, exactly once each."""

    def __init__(self, aead: Aead, keys: TrafficKeys, *, record_limit: int = RECORD_LIMIT) -> None:
        super().__init__(aead, keys, record_limit)

    def open(self, content_type: ContentType, ciphertext: bytes) -> bytes:
        if len(ciphertext) > MAX_PLAINTEXT + AEAD_TAG_LENGTH:
            raise AlertError(Alert.record_overflow, f"protected record of {len(ciphertext)} bytes is too long")
        if self._seq >= self._limit:
            raise AlertError(Alert.unexpected_message, "peer exceeded the per-direction record limit")
        if len(ciphertext) < AEAD_TAG_LENGTH:
            raise AlertError(Alert.bad_record_mac, "protected record shorter than its tag")
        aad = record_aad(content_type, len(ciphertext))
        try:
            plaintext = self._cipher.decrypt(record_nonce(self._iv, self._seq), ciphertext, aad)
        except InvalidTag:
            raise AlertError(Alert.bad_record_mac, "record failed authentication") from None
        self._seq += 1
        return plaintext
