"""The key schedule: TLS 1.3's (RFC 8446 section 7.1) with tlsotp's own label prefix.

Every secret is derived from the one shared secret and a hash of the transcript at a fixed
point, with a distinct label, so that each key is bound to this connection's messages and to
one purpose. Labels start with ``"tlsotp1 "`` instead of ``"tls13 "``: the same input can never
yield the same key in TLS and in tlsotp (domain separation).

Transcript points (``H(a..b)`` = hash of the exact handshake message bytes a through b)::

    early_secret      = Extract(salt=0^Hlen, ikm=0^Hlen)
    handshake_secret  = Extract(salt=Derive-Secret(early_secret, "derived", ""), ikm=shared_secret)
    c_hs_traffic      = Derive-Secret(handshake_secret, "c hs traffic", H(ClientHello..ServerHello))
    s_hs_traffic      = Derive-Secret(handshake_secret, "s hs traffic", H(ClientHello..ServerHello))
    c_finished_key    = Expand-Label(c_hs_traffic, "finished", "", Hlen)
    s_finished_key    = Expand-Label(s_hs_traffic, "finished", "", Hlen)
    master_secret     = Extract(salt=Derive-Secret(handshake_secret, "derived", ""), ikm=0^Hlen)
    c_ap_traffic      = Derive-Secret(master_secret, "c ap traffic", H(ClientHello..client Finished))
    s_ap_traffic      = Derive-Secret(master_secret, "s ap traffic", H(ClientHello..client Finished))
    write key / iv    = Expand-Label(*_ap_traffic, "key" / "iv", "", key_len / 12)

The application secrets stop at the client's Finished (TLS 1.3 stops at the server's) because
the client sends its request right after its Finished, before the server's Finished arrives.
"""

from __future__ import annotations

import functools
import hmac as _hmac
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Writer
from tlsotp.handshake.suites import HashAlgorithm, Suite

LABEL_PREFIX: Final = b"tlsotp1 "
IV_LENGTH: Final = 12


def hkdf_extract(hash_: HashAlgorithm, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 section 2.2) is exactly HMAC(salt, ikm)."""
    mac = HMAC(salt if salt else bytes(hash_.digest_size), hash_.new())
    mac.update(ikm)
    return mac.finalize()


@functools.lru_cache(maxsize=256)
def _label_info(label: str, context: bytes, length: int) -> bytes:
    """The HkdfLabel bytes, built once per (label, context, length) seen: every label is a
    constant and most contexts are empty, so this is a handful of entries."""
    return Writer().u16(length).bytes8(LABEL_PREFIX + label.encode("ascii")).bytes8(context).getvalue()


@functools.lru_cache(maxsize=256)
def _constant_block(label: str, context: bytes, length: int) -> bytes:
    """HKDF-Expand's first HMAC input, info || 0x01, for a constant context (empty, or the
    empty transcript's hash): built once per (label, context, length)."""
    return _label_info(label, context, length) + b"\x01"


@functools.lru_cache(maxsize=256)
def _label_head(label: str, length: int) -> bytes:
    """The HkdfLabel up to its context: u16 length || the prefixed label with its u8 length."""
    return Writer().u16(length).bytes8(LABEL_PREFIX + label.encode("ascii")).getvalue()


def _block(label: str, context: bytes, length: int) -> bytes:
    """info || 0x01 for a context that changes per handshake (a transcript hash)."""
    if len(context) > 0xFF:  # let the Writer refuse it, with its message
        return Writer().raw(_label_head(label, length)).bytes8(context).u8(1).getvalue()
    return _label_head(label, length) + bytes((len(context),)) + context + b"\x01"


def _expand_keyed(mac: HMAC, block: bytes, length: int) -> bytes:
    """T(1) = HMAC(secret, info || 0x01) truncated to ``length`` (at most the hash length), from
    an HMAC already keyed with the secret (consumed here: pass a ``copy()`` to reuse the key)."""
    mac.update(block)
    return mac.finalize()[:length]


def hkdf_expand_label(hash_: HashAlgorithm, secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """HKDF-Expand with TLS 1.3's HkdfLabel structure and tlsotp's label prefix.

    For ``length`` up to the hash length (every key, IV and secret here), HKDF-Expand's output
    is exactly its first block, T(1) = HMAC(secret, info || 0x01) (RFC 5869 section 2.3), so it
    is computed as that one HMAC; longer outputs go through ``HKDFExpand``."""
    if length <= hash_.digest_size:
        block = _block(label, context, length) if context else _constant_block(label, b"", length)
        return _expand_keyed(HMAC(secret, hash_.new()), block, length)
    if context:
        info = Writer().u16(length).bytes8(LABEL_PREFIX + label.encode("ascii")).bytes8(context).getvalue()
    else:
        info = _label_info(label, b"", length)
    return HKDFExpand(algorithm=hash_.new(), length=length, info=info).derive(secret)


def derive_secret(hash_: HashAlgorithm, secret: bytes, label: str, transcript_hash: bytes) -> bytes:
    return hkdf_expand_label(hash_, secret, label, transcript_hash, hash_.digest_size)


@functools.cache
def empty_hash(hash_: HashAlgorithm) -> bytes:
    """Transcript-Hash("") as used by the "derived" steps (a constant per hash)."""
    digest = hashes.Hash(hash_.new())
    return digest.finalize()


@functools.cache
def _early_secrets(hash_: HashAlgorithm) -> tuple[bytes, bytes]:
    """early_secret and Derive-Secret(early_secret, "derived", ""): with no PSK both depend on
    the hash alone, so they are computed once per hash rather than per handshake."""
    zeros = bytes(hash_.digest_size)
    early = hkdf_extract(hash_, zeros, zeros)
    return early, derive_secret(hash_, early, "derived", empty_hash(hash_))


@functools.cache
def _handshake_extract(hash_: HashAlgorithm) -> HMAC:
    """An HMAC keyed with Derive-Secret(early_secret, "derived", ""), the handshake secret's
    Extract salt (a constant per hash): each handshake takes a ``copy()`` and feeds it its
    shared secret, so the constant key is not set up again per handshake. Never updated itself."""
    return HMAC(_early_secrets(hash_)[1], hash_.new())


def finished_mac(hash_: HashAlgorithm, finished_key: bytes, transcript_hash: bytes) -> bytes:
    mac = HMAC(finished_key, hash_.new())
    mac.update(transcript_hash)
    return mac.finalize()


def check_finished(hash_: HashAlgorithm, finished_key: bytes, transcript_hash: bytes, received: bytes, who: str) -> None:
    """Compare in constant time; every mismatch is the same decrypt_error with the same text."""
    expected = finished_mac(hash_, finished_key, transcript_hash)
    if not _hmac.compare_digest(expected, received):
        raise AlertError(Alert.decrypt_error, f"{who} Finished does not verify")


@dataclass(frozen=True, repr=False)
class TrafficKeys:
    """One direction's AEAD key and static IV."""

    key: bytes
    iv: bytes

    def __repr__(self) -> str:
        return "TrafficKeys(<secret>)"


def traffic_keys(suite: Suite, traffic_secret: bytes) -> TrafficKeys:
    hash_, key_length = suite.hash, suite.aead.key_length
    if key_length > hash_.digest_size:  # no suite has one; the general path stays exact
        return TrafficKeys(
            key=hkdf_expand_label(hash_, traffic_secret, "key", b"", key_length),
            iv=hkdf_expand_label(hash_, traffic_secret, "iv", b"", IV_LENGTH),
        )
    # Both come from the same secret: key its HMAC once, expand a copy for the key.
    keyed = HMAC(traffic_secret, hash_.new())
    return TrafficKeys(
        key=_expand_keyed(keyed.copy(), _constant_block("key", b"", key_length), key_length),
        iv=_expand_keyed(keyed, _constant_block("iv", b"", IV_LENGTH), IV_LENGTH),
    )


@dataclass(frozen=True, repr=False)
class HandshakeSecrets:
    """Everything derived before the client's Finished; repr hides it so logs cannot leak it."""

    early_secret: bytes
    derived_early: bytes
    handshake_secret: bytes
    client_handshake_traffic: bytes
    server_handshake_traffic: bytes
    client_finished_key: bytes
    server_finished_key: bytes
    derived_handshake: bytes
    master_secret: bytes

    def __repr__(self) -> str:
        return "HandshakeSecrets(<secret>)"


def derive_handshake_secrets(hash_: HashAlgorithm, shared_secret: bytes, hello_hash: bytes) -> HandshakeSecrets:
    """``hello_hash`` is H(ClientHello..ServerHello).

    Each secret used for several expansions keys one HMAC, and each expansion but its last
    runs on a ``copy()`` of it (the same HMAC state, without setting the key up again)."""
    size = hash_.digest_size
    early, derived_early = _early_secrets(hash_)
    extract = _handshake_extract(hash_).copy()
    extract.update(shared_secret)
    handshake = extract.finalize()
    keyed = HMAC(handshake, hash_.new())
    c_hs = _expand_keyed(keyed.copy(), _block("c hs traffic", hello_hash, size), size)
    s_hs = _expand_keyed(keyed.copy(), _block("s hs traffic", hello_hash, size), size)
    derived_handshake = _expand_keyed(keyed, _constant_block("derived", empty_hash(hash_), size), size)
    return HandshakeSecrets(
        early_secret=early,
        derived_early=derived_early,
        handshake_secret=handshake,
        client_handshake_traffic=c_hs,
        server_handshake_traffic=s_hs,
        client_finished_key=_expand_keyed(HMAC(c_hs, hash_.new()), _constant_block("finished", b"", size), size),
        server_finished_key=_expand_keyed(HMAC(s_hs, hash_.new()), _constant_block("finished", b"", size), size),
        derived_handshake=derived_handshake,
        master_secret=hkdf_extract(hash_, derived_handshake, bytes(size)),
    )


@dataclass(frozen=True, repr=False)
class ApplicationSecrets:
    client_application_traffic: bytes
    server_application_traffic: bytes
    client_keys: TrafficKeys
    server_keys: TrafficKeys

    def __repr__(self) -> str:
        return "ApplicationSecrets(<secret>)"


def derive_application_secrets(suite: Suite, master_secret: bytes, client_finished_hash: bytes) -> ApplicationSecrets:
    """``client_finished_hash`` is H(ClientHello..client Finished)."""
    size = suite.hash.digest_size
    keyed = HMAC(master_secret, suite.hash.new())
    c_ap = _expand_keyed(keyed.copy(), _block("c ap traffic", client_finished_hash, size), size)
    s_ap = _expand_keyed(keyed, _block("s ap traffic", client_finished_hash, size), size)
    return ApplicationSecrets(
        client_application_traffic=c_ap,
        server_application_traffic=s_ap,
        client_keys=traffic_keys(suite, c_ap),
        server_keys=traffic_keys(suite, s_ap),
    )
