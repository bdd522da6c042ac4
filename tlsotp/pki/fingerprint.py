"""Certificate fingerprints in the one spelling tlsotp prints and accepts: ``sha256:HEX``.

A requester pins the TTP's root by this value, so parsing is strict and comparison is
constant-time.
"""

from __future__ import annotations

import hmac

from cryptography import x509
from cryptography.hazmat.primitives import hashes

PREFIX = "sha256:"


def fingerprint(cert: x509.Certificate) -> str:
    return PREFIX + cert.fingerprint(hashes.SHA256()).hex()


def parse_fingerprint(text: str) -> bytes:
    """Accept ``sha256:HEX`` (64 hex digits; colons between bytes and any case tolerated)."""
    value = text.strip()
    if not value.lower().startswith(PREFIX):
        raise ValueError("a fingerprint must start with 'sha256:'")
    digits = value[len(PREFIX) :].replace(":", "")
    if len(digits) != 64:
        raise ValueError("a sha256 fingerprint has 64 hex digits")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise ValueError("a fingerprint must be hexadecimal") from None


def matches_fingerprint(cert: x509.Certificate, expected: bytes) -> bool:
    return hmac.compare_digest(cert.fingerprint(hashes.SHA256()), expected)
