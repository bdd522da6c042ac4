"""Turning a peer's Certificate message into a trusted chain and a usable public key.

Trust decisions belong to the configured validator (normally ``tlsotp.pki.verify.PeerVerifier``);
this module only parses, passes the validator's refusal through unchanged, and checks that
the leaf key is one tlsotp can verify signatures with.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.config import PeerValidator
from tlsotp.handshake.suites import SignatureKind, signature_kind_for_key

PeerKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def parse_chain(chain_der: Sequence[bytes]) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_der_x509_certificate(der) for der in chain_der)
    except (ValueError, x509.InvalidVersion):  # a version field other than v1/v3 is not a ValueError
        raise AlertError(Alert.bad_certificate, "certificate is not valid DER X.509") from None


def encode_chain(chain: Sequence[x509.Certificate]) -> tuple[bytes, ...]:
    return tuple(cert.public_bytes(serialization.Encoding.DER) for cert in chain)


def run_validator(validate: PeerValidator, chain: Sequence[x509.Certificate]) -> None:
    """Pass the validator's AlertError through; anything else it raises on hostile input
    (a lazily parsed extension that turns out malformed) is still only a bad certificate."""
    try:
        validate(chain)
    except AlertError:
        raise
    except Exception as exc:  # noqa: BLE001 - peer input must never escape as a traceback
        raise AlertError(Alert.bad_certificate, f"certificate validation failed: {type(exc).__name__}: {exc}") from None


def leaf_key(chain: Sequence[x509.Certificate]) -> tuple[PeerKey, SignatureKind]:
    """The leaf's public key and the signature it makes; unusable keys are unsupported_certificate."""
    try:
        key = chain[0].public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise AlertError(Alert.unsupported_certificate, "leaf certificate key cannot be loaded") from None
    kind = signature_kind_for_key(key)
    if kind is None or not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise AlertError(
            Alert.unsupported_certificate,
            f"leaf certificate key {type(key).__name__} is not EC P-256/P-384 or RSA >= 2048",
        )
    return key, kind
