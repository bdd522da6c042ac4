"""Signing a message with a certified key, and checking such a signature.

One scheme per key type, so signer and verifier never negotiate: ECDSA with the key's
certificate hash (SHA-384 for P-384, else SHA-256), RSA-PSS with SHA-256 and a digest-length
salt. Callers put a distinct label at the start of every signed message, so a signature made for
one purpose can never be presented for another.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tlsotp.pki.keys import PrivateKey, PublicKey, signature_hash_for


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def sign_message(key: PrivateKey, message: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, _pss(), hashes.SHA256())
    return key.sign(message, ec.ECDSA(signature_hash_for(key)))


def signature_is_valid(public_key: PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, _pss(), hashes.SHA256())
        else:
            public_key.verify(signature, message, ec.ECDSA(signature_hash_for(public_key)))
    except (InvalidSignature, ValueError):
        return False
    return True
