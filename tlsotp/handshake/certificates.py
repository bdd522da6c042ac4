"""Turning a peer's Certificate message into a trusted chain and a usable public key.

Trust decisions belong to the configured validator (normally ``tlsotp.pki.verify.PeerVerifier``);
this module only parses, passes the validator's refusal through unchanged, and checks that
the leaf key is one tlsotp can verify signatures with.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.config import PeerValidator
from tlsotp.handshake.suites import SignatureKind, signature_kind_for_key
from tlsotp.pki import der

PeerKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def parse_chain(chain_der: Sequence[bytes]) -> tuple[x509.Certificate, ...]:
    """The peer's DER chain as certificates; anything unparseable (including a version field
    cryptography refuses with ``InvalidVersion``) is bad_certificate."""
    try:
        return der.ParsedChain.load(chain_der)  # keeps the DER: the verifier's cache key
    except der.MalformedDER as exc:
        raise AlertError(Alert.bad_certificate, str(exc)) from None


def encode_chain(chain: Sequence[x509.Certificate]) -> tuple[bytes, ...]:
    return tuple(cert.public_bytes(serialization.Encoding.DER) for cert in chain)


def run_validator(validate: PeerValidator, chain: Sequence[x509.Certificate]) -> None:
    """Pass the validator's AlertError through; anything else it raises on hostile input
    (a lazily parsed extension that turns out malformed) is still only a bad certificate."""
    with der.malformed_as(Alert.bad_certificate, "certificate validation failed"):
        validate(chain)


#: Leaf keys of received chains by the leaf's exact DER (``der.by_leaf_der``).
MAX_KNOWN_LEAF_KEYS = 1024
_keys_by_der: dict[bytes, tuple[PeerKey, SignatureKind]] = {}


def leaf_key(chain: Sequence[x509.Certificate]) -> tuple[PeerKey, SignatureKind]:
    """The leaf's public key and the signature it makes; unusable keys are unsupported_certificate."""
    if not isinstance(chain, der.ParsedChain):
        return _certificate_key(chain[0])
    return der.by_leaf_der(_keys_by_der, MAX_KNOWN_LEAF_KEYS, chain, _load_key)


def _load_key(cert: x509.Certificate) -> tuple[PeerKey, SignatureKind]:
    with der.malformed_as(Alert.unsupported_certificate, "leaf certificate key cannot be loaded"):
        key = cert.public_key()
    kind = signature_kind_for_key(key)
    if kind is None or not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise AlertError(
            Alert.unsupported_certificate,
            f"leaf certificate key {type(key).__name__} is not EC P-256/P-384 or RSA >= 2048",
        )
    return key, kind


@functools.lru_cache(maxsize=1024)
def _certificate_key(cert: x509.Certificate) -> tuple[PeerKey, SignatureKind]:
    """Cached per certificate: equal certificates (``x509.Certificate`` hashes and compares its
    DER) have the same key, so a returning client's key is loaded once, not per session. A
    refusal raises and is not cached."""
    return _load_key(cert)
