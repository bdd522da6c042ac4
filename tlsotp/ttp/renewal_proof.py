"""The renewal proof: a signature with the current certificate's key over the new request.

The signed message binds a protocol label, the current certificate, the new CSR, a fresh nonce
and the requester's clock. The TTP accepts it within a small window around its own clock, and
only once in effect: a successful renewal supersedes the current certificate, which then can no
longer be renewed, so a replayed request is refused.
"""

from __future__ import annotations

from tlsotp.codec import Writer
from tlsotp.pki.keys import PrivateKey, PublicKey
from tlsotp.pki.signing import sign_message, signature_is_valid

RENEW_PROOF_LABEL = "tlsotp-ttp renew proof v1"
# How far the requester's clock may be from the TTP's.
TIMESTAMP_WINDOW_SECONDS = 300


def renewal_transcript(cert_der: bytes, csr_der: bytes, nonce: bytes, timestamp: int) -> bytes:
    return (
        Writer()
        .text16(RENEW_PROOF_LABEL)
        .bytes16(cert_der)
        .bytes16(csr_der)
        .bytes8(nonce)
        .u64(timestamp)
        .getvalue()
    )


def sign_renewal(key: PrivateKey, cert_der: bytes, csr_der: bytes, nonce: bytes, timestamp: int) -> bytes:
    return sign_message(key, renewal_transcript(cert_der, csr_der, nonce, timestamp))


def renewal_signature_is_valid(
    public_key: PublicKey, signature: bytes, cert_der: bytes, csr_der: bytes, nonce: bytes, timestamp: int
) -> bool:
    return signature_is_valid(public_key, signature, renewal_transcript(cert_der, csr_der, nonce, timestamp))


def timestamp_is_fresh(timestamp: int, now: float, window: int = TIMESTAMP_WINDOW_SECONDS) -> bool:
    return abs(timestamp - now) <= window
