"""CertificateVerify signatures: proof of possession of a certificate's private key.

What is signed follows TLS 1.3 section 4.4.3: 64 spaces, a context string naming the signer's
role, one zero byte, then the transcript hash. The spaces defeat chosen-prefix reuse of older
signatures; the role strings stop a server signature being replayed as a client one (or the
reverse); the transcript hash binds the signature to this connection's randoms, offers and
key shares, which is what makes downgrades and man-in-the-middle substitutions fail.

ECDSA is deterministic (RFC 6979) so test vectors are reproducible; RSA-PSS uses MGF1 with
the suite hash and a salt as long as the digest.
"""

from __future__ import annotations

import enum
import functools
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.suites import HashAlgorithm, SignatureKind

SERVER_CONTEXT: Final = b"tlsotp/1, server CertificateVerify"
CLIENT_CONTEXT: Final = b"tlsotp/1, client CertificateVerify"


class SignatureScheme(enum.IntEnum):
    """Wire codes (TLS's values). Unlike TLS, ECDSA codes do not pin the curve: the
    certificate's curve (P-256 or P-384) is used with the suite's hash."""

    ecdsa_sha256 = 0x0403
    ecdsa_sha384 = 0x0503
    rsa_pss_sha256 = 0x0804
    rsa_pss_sha384 = 0x0805


_SCHEMES: Final[dict[tuple[SignatureKind, HashAlgorithm], SignatureScheme]] = {
    (SignatureKind.ECDSA, HashAlgorithm.SHA256): SignatureScheme.ecdsa_sha256,
    (SignatureKind.ECDSA, HashAlgorithm.SHA384): SignatureScheme.ecdsa_sha384,
    (SignatureKind.RSA_PSS, HashAlgorithm.SHA256): SignatureScheme.rsa_pss_sha256,
    (SignatureKind.RSA_PSS, HashAlgorithm.SHA384): SignatureScheme.rsa_pss_sha384,
}


def scheme_for(kind: SignatureKind, hash_: HashAlgorithm) -> SignatureScheme:
    return _SCHEMES[(kind, hash_)]


def signed_content(context: bytes, transcript_hash: bytes) -> bytes:
    return b" " * 64 + context + b"\x00" + transcript_hash


# The signature parameters are immutable descriptors: built once per hash and reused (an
# ECDSA object asks the backend whether deterministic signing is supported each time it is
# built). functools.cache does not keep a failure, so one would still surface at each use.


@functools.cache
def _pss(hash_: HashAlgorithm) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hash_.new()), salt_length=hash_.digest_size)


@functools.cache
def _ecdsa(hash_: HashAlgorithm, deterministic: bool) -> ec.ECDSA:
    return ec.ECDSA(hash_.new(), deterministic_signing=deterministic)


def sign(private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, hash_: HashAlgorithm, content: bytes) -> bytes:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(content, _ecdsa(hash_, True))
    return private_key.sign(content, _pss(hash_), hash_.new())


def verify(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    hash_: HashAlgorithm,
    signature: bytes,
    content: bytes,
    who: str,
) -> None:
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, content, _ecdsa(hash_, False))
        else:
            public_key.verify(signature, content, _pss(hash_), hash_.new())
    except InvalidSignature:
        raise AlertError(Alert.decrypt_error, f"{who} CertificateVerify signature does not verify") from None
