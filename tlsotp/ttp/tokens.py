"""Enrollment tokens and the proofs made with them.

A token is ``<id>.<secret>``, both random and URL-safe. The id travels in clear and names the
token; the secret never leaves the requester. Both sides derive a MAC key from the secret
(HKDF-SHA256, salted with the id) and the requester sends HMAC(MAC key, transcript), where the
transcript binds a protocol label, the token id, the role, the name, a fresh nonce and the
CSR. So an eavesdropper learns nothing it can use, and a man in the middle who swaps in his own
CSR, name or role breaks the proof.

The TTP stores only the derived MAC key, never the secret. That key is not the token, but it
suffices to make proofs: a copy of the database is as sensitive as the CA key for every token
not yet spent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tlsotp.codec import Writer
from tlsotp.pki.roles import Role

TOKEN_ID_BYTES = 16
TOKEN_SECRET_BYTES = 32
MAC_KEY_BYTES = 32
MAC_KEY_LABEL = b"tlsotp-ttp token mac key v1"
ENROLL_PROOF_LABEL = "tlsotp-ttp enroll proof v1"

_B64 = r"[A-Za-z0-9_-]"
_TOKEN = re.compile(rf"({_B64}{{22}})\.({_B64}{{43}})")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Token:
    token_id: str
    secret: bytes

    @classmethod
    def generate(cls) -> Token:
        # An id never starts with "-": the operator passes it as an argument ("ttp withdraw ID"),
        # where a leading "-" would read as an option (drawing again costs under 0.03 bits).
        token_id = "-"
        while token_id.startswith("-"):
            token_id = _b64(secrets.token_bytes(TOKEN_ID_BYTES))
        return cls(token_id, secrets.token_bytes(TOKEN_SECRET_BYTES))

    @classmethod
    def parse(cls, text: str) -> Token:
        match = _TOKEN.fullmatch(text.strip())
        if match is None:
            raise ValueError("a token looks like <22 characters>.<43 characters>, as 'tlsotp ttp token' prints it")
        return cls(match.group(1), _unb64(match.group(2)))

    def __str__(self) -> str:
        return f"{self.token_id}.{_b64(self.secret)}"

    def __repr__(self) -> str:
        return f"Token(token_id={self.token_id!r}, secret=<hidden>)"

    def mac_key(self) -> bytes:
        return derive_mac_key(self.token_id, self.secret)


def derive_mac_key(token_id: str, secret: bytes) -> bytes:
    """The key both sides MAC with; the TTP stores this, not the secret."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=MAC_KEY_BYTES, salt=token_id.encode("ascii"), info=MAC_KEY_LABEL)
    return hkdf.derive(secret)


def enrollment_transcript(token_id: str, role: Role, name: str, nonce: bytes, csr_der: bytes) -> bytes:
    """Length-prefixed fields, so that no two different requests have the same transcript."""
    return (
        Writer()
        .text16(ENROLL_PROOF_LABEL)
        .text16(token_id)
        .text16(role.value)
        .text16(name)
        .bytes8(nonce)
        .bytes16(csr_der)
        .getvalue()
    )


def enrollment_proof(mac_key: bytes, token_id: str, role: Role, name: str, nonce: bytes, csr_der: bytes) -> bytes:
    transcript = enrollment_transcript(token_id, role, name, nonce, csr_der)
    return hmac.new(mac_key, transcript, hashlib.sha256).digest()


def proof_is_valid(
    mac_key: bytes, proof: bytes, token_id: str, role: Role, name: str, nonce: bytes, csr_der: bytes
) -> bool:
    expected = enrollment_proof(mac_key, token_id, role, name, nonce, csr_der)
    return hmac.compare_digest(expected, proof)
