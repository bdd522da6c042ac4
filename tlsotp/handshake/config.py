"""What each side is configured with: its identity, how it judges the peer, what it offers.

Randomness and ephemeral keys are injectable so that test vectors can fix them; in normal use
the defaults draw from the operating system. Configurations check themselves when built, so a
mismatched key and certificate fails at start-up rather than as a puzzling handshake failure.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tlsotp.handshake.events import TraceRecord
from tlsotp.handshake.key_exchange import EphemeralKeyFactory, generate_ephemeral_key
from tlsotp.handshake.limits import MAX_CHAIN, MAX_SUITES
from tlsotp.handshake.suites import DEFAULT_SUITES, SignatureKind, Suite, signature_kind_for_key, suites_for_key
from tlsotp.pki.keys import PrivateKey

#: A certificate key tlsotp can sign with.
SigningKey: TypeAlias = PrivateKey

#: Checks a peer's leaf-first chain; raises ``AlertError`` to refuse (e.g. a ``PeerVerifier``).
PeerValidator: TypeAlias = Callable[[Sequence[x509.Certificate]], None]

Observer: TypeAlias = Callable[[TraceRecord], None]


def _public_der(key: object) -> bytes:
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise ValueError(f"unsupported public key type {type(key).__name__}")
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class _SideConfig:
    """What both sides are configured with; each side's class adds its own checks."""

    certificate_chain: Sequence[x509.Certificate]
    private_key: SigningKey
    validate_peer: PeerValidator
    suites: Sequence[Suite] = DEFAULT_SUITES
    random_bytes: Callable[[int], bytes] = os.urandom
    ephemeral_keys: EphemeralKeyFactory = generate_ephemeral_key
    observer: Observer | None = None

    @functools.cached_property
    def encoded_chain(self) -> tuple[bytes, ...]:
        """The chain as the Certificate message carries it, DER-encoded once per configuration."""
        return tuple(cert.public_bytes(serialization.Encoding.DER) for cert in self.certificate_chain)

    @functools.cached_property
    def signature_kind(self) -> SignatureKind | None:
        """The signature this side's private key makes (its key never changes: asked once)."""
        return signature_kind_for_key(self.private_key.public_key())

    def _check_common(self, role: str) -> None:
        chain, private_key, suites = self.certificate_chain, self.private_key, self.suites
        if signature_kind_for_key(private_key.public_key()) is None:
            raise ValueError(f"{role} private key cannot sign in tlsotp (need EC P-256/P-384 or RSA >= 2048)")
        if len(chain) > MAX_CHAIN:
            raise ValueError(f"{role} certificate chain has {len(chain)} certificates; at most {MAX_CHAIN}")
        if chain and _public_der(chain[0].public_key()) != _public_der(private_key.public_key()):
            raise ValueError(f"{role} private key does not match the leaf certificate")
        if not suites:
            raise ValueError(f"{role} offers no cipher suites")
        if len(suites) > MAX_SUITES:
            raise ValueError(f"{role} offers {len(suites)} cipher suites; at most {MAX_SUITES}")
        if len(set(suites)) != len(suites):
            raise ValueError(f"{role} cipher suite list has duplicates")


@dataclass(frozen=True)
class ClientConfig(_SideConfig):
    """The client's side. An empty chain makes the client send an empty Certificate, which
    the server refuses with certificate_required: tlsotp always authenticates the client."""

    def __post_init__(self) -> None:
        self._check_common("client")


@dataclass(frozen=True)
class ServerConfig(_SideConfig):
    """The server's side; ``suites`` is its preference order, which decides the choice.

    Build one per credentials generation and share it between connections: its checks, the
    usable suites and the encoded chain are computed once (a ``ServerConnection`` only reads it).
    """

    def __post_init__(self) -> None:
        if not self.certificate_chain:
            raise ValueError("server needs a certificate chain")
        self._check_common("server")
        if not self.usable_suites:
            raise ValueError("none of the server's cipher suites can be authenticated by its certificate key")

    @functools.cached_property
    def usable_suites(self) -> tuple[Suite, ...]:
        """The suites, in preference order, that this certificate key can authenticate (once)."""
        return suites_for_key(self.private_key.public_key(), self.suites)
