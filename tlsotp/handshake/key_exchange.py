"""Agreeing on the shared secret: ECDHE on one group, or RSA-OAEP key transport.

Key shares travel as TLS 1.3 encodes them: X25519 as the raw 32-byte public key, P-256 and
P-384 as uncompressed SEC1 points. Anything a peer sends that does not load, or that makes the
exchange fail (an off-curve point, a small-order X25519 key), is ``illegal_parameter``.

RSA transport has no padding oracle: the server draws a replacement secret *before* it tries
to decrypt, and uses it whenever decryption fails or yields the wrong length. A bad ciphertext
then only shows up as a client Finished that does not verify, exactly like a tampered Finished.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.limits import TRANSPORTED_SECRET_LENGTH
from tlsotp.handshake.suites import Group

EphemeralPrivateKey: TypeAlias = X25519PrivateKey | ec.EllipticCurvePrivateKey
EphemeralPublicKey: TypeAlias = X25519PublicKey | ec.EllipticCurvePublicKey

#: Makes a fresh ECDHE private key for a group; injectable so test vectors are reproducible.
EphemeralKeyFactory: TypeAlias = Callable[[Group], EphemeralPrivateKey]

_CURVES: dict[Group, type[ec.EllipticCurve]] = {Group.P256: ec.SECP256R1, Group.P384: ec.SECP384R1}
_SHARE_LENGTH: dict[Group, int] = {Group.X25519: 32, Group.P256: 65, Group.P384: 97}


def generate_ephemeral_key(group: Group) -> EphemeralPrivateKey:
    """The default ``EphemeralKeyFactory``: a fresh key from the OS CSPRNG."""
    if group is Group.X25519:
        return X25519PrivateKey.generate()
    return ec.generate_private_key(_CURVES[group]())


def group_of_key(key: EphemeralPrivateKey) -> Group | None:
    if isinstance(key, X25519PrivateKey):
        return Group.X25519
    for group, curve in _CURVES.items():
        if isinstance(key.curve, curve):
            return group
    return None


def make_ephemeral_key(factory: EphemeralKeyFactory, group: Group) -> EphemeralPrivateKey:
    """Call the factory and insist it honoured the group (a misconfigured factory is our bug)."""
    key = factory(group)
    if group_of_key(key) is not group:
        raise AlertError(Alert.internal_error, f"ephemeral key factory returned a key for the wrong group (wanted {group.name})")
    return key


def encode_key_share(key: EphemeralPrivateKey) -> bytes:
    public = key.public_key()
    if isinstance(public, X25519PublicKey):
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def load_key_share(group: Group, data: bytes) -> EphemeralPublicKey:
    """Parse a peer's share; wrong length, wrong point format or off-curve is illegal_parameter."""
    if len(data) != _SHARE_LENGTH[group]:
        raise AlertError(Alert.illegal_parameter, f"{group.name} key share must be {_SHARE_LENGTH[group]} bytes, got {len(data)}")
    try:
        if group is Group.X25519:
            return X25519PublicKey.from_public_bytes(data)
        if data[0] != 0x04:
            raise ValueError("not an uncompressed point")
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[group](), data)
    except ValueError:
        raise AlertError(Alert.illegal_parameter, f"invalid {group.name} key share") from None


def ecdh_shared_secret(private_key: EphemeralPrivateKey, peer_share: EphemeralPublicKey) -> bytes:
    try:
        if isinstance(private_key, X25519PrivateKey):
            if not isinstance(peer_share, X25519PublicKey):
                raise ValueError("group mismatch")
            return private_key.exchange(peer_share)
        if not isinstance(peer_share, ec.EllipticCurvePublicKey):
            raise ValueError("group mismatch")
        return private_key.exchange(ec.ECDH(), peer_share)
    except ValueError:
        raise AlertError(Alert.illegal_parameter, "key exchange failed on the peer's key share") from None


@functools.cache
def _oaep() -> padding.OAEP:
    """Built once: the padding is an immutable descriptor."""
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def wrap_secret(server_key: rsa.RSAPublicKey, secret: bytes) -> bytes:
    """The client's KeyTransport payload: RSA-OAEP(SHA-256, MGF1-SHA-256) of the secret."""
    return server_key.encrypt(secret, _oaep())


def unwrap_secret(server_key: rsa.RSAPrivateKey, ciphertext: bytes, replacement: bytes) -> bytes:
    """The transported secret, or ``replacement`` on any failure: never tell the peer which.

    ``replacement`` must be fresh random bytes drawn before this call, so that both outcomes
    take the same path through the caller.
    """
    if len(replacement) != TRANSPORTED_SECRET_LENGTH:
        raise ValueError("replacement secret has the wrong length")
    try:
        secret = server_key.decrypt(ciphertext, _oaep())
    except ValueError:
        return replacement
    if len(secret) != TRANSPORTED_SECRET_LENGTH:
        return replacement
    return secret
