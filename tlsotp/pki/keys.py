"""Key types tlsotp offers, key generation, and the one policy on acceptable public keys.

The same policy is applied when the TTP issues a certificate and when a peer's certificate is
verified, because cryptography's verifier only bounds the RSA size of *signing* keys.
"""

from __future__ import annotations

import enum
from typing import Union

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey]

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class KeyType(enum.Enum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


KEY_TYPE_NAMES = tuple(kt.value for kt in KeyType)


class UnacceptableKey(ValueError):
    """A public key outside tlsotp's policy (weak RSA, an unoffered curve, another algorithm)."""


def generate_private_key(key_type: KeyType) -> PrivateKey:
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = int(key_type.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def parse_key_type(text: str) -> KeyType:
    try:
        return KeyType(text)
    except ValueError:
        raise ValueError(
            f"unknown key type {text!r}; choose one of {', '.join(KEY_TYPE_NAMES)}"
        ) from None


def check_public_key(key: object) -> PublicKey:
    """Return the key if tlsotp accepts it, else raise UnacceptableKey saying why."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise UnacceptableKey(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} required")
        if key.key_size > MAX_RSA_BITS:
            raise UnacceptableKey(f"RSA key of {key.key_size} bits; at most {MAX_RSA_BITS} accepted")
        if key.public_numbers().e != 65537:
            raise UnacceptableKey("RSA public exponent must be 65537")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise UnacceptableKey(f"elliptic curve {key.curve.name} is not offered; use P-256 or P-384")
        return key
    raise UnacceptableKey(f"key algorithm {type(key).__name__} is not offered; use EC or RSA")


def signature_hash_for(key: PrivateKey | PublicKey) -> hashes.SHA256 | hashes.SHA384:
    """The hash a certificate or CSR signed by this key uses: SHA-384 for P-384, else SHA-256."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(
        key.curve, ec.SECP384R1
    ):
        return hashes.SHA384()
    return hashes.SHA256()


def describe_key(key: PrivateKey | PublicKey) -> str:
    """A short human name such as 'ec-p256' or 'rsa-3072', for logs and listings."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name, f"ec-{key.curve.name}")
    return f"rsa-{key.key_size}"
