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


def hkdf_expand_label(hash_: HashAlgorithm, secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """HKDF-Expand with TLS 1.3's HkdfLabel structure and tlsotp's label prefix.

    For ``length`` up to the hash length (every key, IV and secret here), HKDF-Expand's output
    is exactly its first block, T(1) = HMAC(secret, info || 0x01) (RFC 5869 section 2.3), so it
    is computed as that one HMAC; longer outputs go through ``HKDFExpand``."""
    if context:
        info = Writer().u16(length).bytes8(LABEL_PREFIX + label.encode("ascii")).bytes8(context).getvalue()
    else:
        info = _label_info(label, b"", length)
    if length <= hash_.digest_size:
        mac = HMAC(secret, hash_.new())
        mac.update(info)
        mac.update(b"\x01")
        return mac.finalize()[:length]
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
    return TrafficKeys(
        key=hkdf_expand_label(suite.hash, traffic_secret, "key", b"", suite.aead.key_length),
        iv=hkdf_expand_label(suite.hash, traffic_secret, "iv", b"", IV_LENGTH),
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
    """``hello_hash`` is H(ClientHello..ServerHello)."""
    zeros = bytes(hash_.digest_size)
    early, derived_early = _early_secrets(hash_)
    handshake = hkdf_extract(hash_, derived_early, shared_secret)
    c_hs = derive_secret(hash_, handshake, "c hs traffic", hello_hash)
    s_hs = derive_secret(hash_, handshake, "s hs traffic", hello_hash)
    derived_handshake = derive_secret(hash_, handshake, "derived", empty_hash(hash_))
    return HandshakeSecrets(
        early_secret=early,
        derived_early=derived_early,
        handshake_secret=handshake,
        client_handshake_traffic=c_hs,
        server_handshake_traffic=s_hs,
        client_finished_key=hkdf_expand_label(hash_, c_hs, "finished", b"", hash_.digest_size),
        server_finished_key=hkdf_expand_label(hash_, s_hs, "finished", b"", hash_.digest_size),
        derived_handshake=derived_handshake,
        master_secret=hkdf_extract(hash_, derived_handshake, zeros),
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
    c_ap = derive_secret(suite.hash, master_secret, "c ap traffic", client_finished_hash)
    s_ap = derive_secret(suite.hash, master_secret, "s ap traffic", client_finished_hash)
    return ApplicationSecrets(
        client_application_traffic=c_ap,
        server_application_traffic=s_ap,
        client_keys=traffic_keys(suite, c_ap),
        server_keys=traffic_keys(suite, s_ap),
    )
