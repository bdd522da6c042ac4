"""Cipher suites: named, curated combinations of the four choices a connection makes.

A suite fixes how the shared secret is agreed (ECDHE on one group, or RSA-OAEP key transport),
how the server proves its identity (ECDSA or RSA-PSS signature), which AEAD protects records
and which hash drives the transcript and key schedule. Offering whole combinations rather than
independent menus keeps the negotiation one number and keeps weak mixes out of the table.

Codes are structured for readers, but the table is the only authority:
high byte ``0xAG`` (A = 0 ECDHE+ECDSA, 1 ECDHE+RSA-PSS, 2 RSA-OAEP transport; G = 1 X25519,
2 P-384, 3 P-256, 0 none), low byte 01 = AES-256-GCM/SHA-384, 02 = ChaCha20-Poly1305/SHA-256,
03 = AES-128-GCM/SHA-256.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tlsotp.pki.keys import UnacceptableKey, check_public_key


class KeyExchange(enum.Enum):
    # Members are singletons that compare by identity; an identity hash (C) agrees with that and
    # spares Enum.__hash__'s Python call on every dict and cache lookup keyed by a member.
    __hash__ = object.__hash__

    ECDHE = "ECDHE"
    RSA_OAEP = "RSA_OAEP"


class Group(enum.IntEnum):
    """ECDHE groups; the values are the wire codes in key shares (TLS's NamedGroup codes)."""

    P256 = 0x0017
    P384 = 0x0018
    X25519 = 0x001D


class SignatureKind(enum.Enum):
    # Members are singletons that compare by identity; an identity hash (C) agrees with that and
    # spares Enum.__hash__'s Python call on every dict and cache lookup keyed by a member.
    __hash__ = object.__hash__

    ECDSA = "ECDSA"
    RSA_PSS = "RSA_PSS"


class Aead(enum.Enum):
    # Members are singletons that compare by identity; an identity hash (C) agrees with that and
    # spares Enum.__hash__'s Python call on every dict and cache lookup keyed by a member.
    __hash__ = object.__hash__

    AES_128_GCM = "AES_128_GCM"
    AES_256_GCM = "AES_256_GCM"
    CHACHA20_POLY1305 = "CHACHA20_POLY1305"

    @property
    def key_length(self) -> int:
        return 16 if self is Aead.AES_128_GCM else 32


class HashAlgorithm(enum.Enum):
    # Members are singletons that compare by identity; an identity hash (C) agrees with that and
    # spares Enum.__hash__'s Python call on every dict and cache lookup keyed by a member.
    __hash__ = object.__hash__

    SHA256 = "SHA256"
    SHA384 = "SHA384"

    def new(self) -> hashes.HashAlgorithm:
        """A fresh ``cryptography`` hash object (they are not reusable across contexts)."""
        return hashes.SHA256() if self is HashAlgorithm.SHA256 else hashes.SHA384()

    @property
    def digest_size(self) -> int:
        return 32 if self is HashAlgorithm.SHA256 else 48


@dataclass(frozen=True)
class Suite:
    code: int
    name: str
    key_exchange: KeyExchange
    group: Group | None
    authentication: SignatureKind
    aead: Aead
    hash: HashAlgorithm

    def __str__(self) -> str:
        return self.name


def _suite(code: int, group: Group | None, auth: SignatureKind, aead: Aead, hash_: HashAlgorithm) -> Suite:
    """Spell the name from the components so a name can never disagree with its meaning."""
    if group is None:
        exchange = KeyExchange.RSA_OAEP
        head = "RSA_OAEP"
    else:
        exchange = KeyExchange.ECDHE
        head = f"ECDHE_{group.name}_{auth.value}"
    return Suite(
        code=code,
        name=f"TLSOTP_{head}_WITH_{aead.value}_{hash_.value}",
        key_exchange=exchange,
        group=group,
        authentication=auth,
        aead=aead,
        hash=hash_,
    )


_E, _P = SignatureKind.ECDSA, SignatureKind.RSA_PSS
_A256, _CHACHA, _A128 = Aead.AES_256_GCM, Aead.CHACHA20_POLY1305, Aead.AES_128_GCM
_S384, _S256 = HashAlgorithm.SHA384, HashAlgorithm.SHA256

#: Every suite this implementation knows, strongest first. Forward-secret ECDHE suites come
#: before RSA transport; within them 256-bit AEADs before 128-bit, X25519 before the NIST curves.
ALL_SUITES: Final[tuple[Suite, ...]] = (
    _suite(0x0101, Group.X25519, _E, _A256, _S384),
    _suite(0x0201, Group.P384, _E, _A256, _S384),
    _suite(0x0102, Group.X25519, _E, _CHACHA, _S256),
    _suite(0x0302, Group.P256, _E, _CHACHA, _S256),
    _suite(0x0103, Group.X25519, _E, _A128, _S256),
    _suite(0x0303, Group.P256, _E, _A128, _S256),
    _suite(0x1101, Group.X25519, _P, _A256, _S384),
    _suite(0x1201, Group.P384, _P, _A256, _S384),
    _suite(0x1102, Group.X25519, _P, _CHACHA, _S256),
    _suite(0x1103, Group.X25519, _P, _A128, _S256),
    _suite(0x1303, Group.P256, _P, _A128, _S256),
    _suite(0x2001, None, _P, _A256, _S384),
    _suite(0x2002, None, _P, _CHACHA, _S256),
    _suite(0x2003, None, _P, _A128, _S256),
)

#: What both sides offer/accept unless configured otherwise: the whole table, in its order.
DEFAULT_SUITES: Final[tuple[Suite, ...]] = ALL_SUITES

_BY_CODE: Final[dict[int, Suite]] = {s.code: s for s in ALL_SUITES}
_BY_NAME: Final[dict[str, Suite]] = {s.name: s for s in ALL_SUITES}
assert len(_BY_CODE) == len(ALL_SUITES) and len(_BY_NAME) == len(ALL_SUITES)


def suite_for_code(code: int) -> Suite | None:
    """The suite a wire code names, or None for codes we do not know (peers may offer them)."""
    return _BY_CODE.get(code)


def suite_named(name: str) -> Suite:
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(s.name for s in ALL_SUITES)
        raise ValueError(f"unknown cipher suite {name!r}; known suites: {known}") from None


def parse_suite_list(text: str) -> tuple[Suite, ...]:
    """Parse a ``--suites`` value: comma-separated names, in preference order."""
    names = [part.strip() for part in text.split(",")]
    if not any(names):
        raise ValueError("empty cipher suite list")
    suites: list[Suite] = []
    for name in names:
        if not name:
            raise ValueError(f"empty name in cipher suite list {text!r}")
        suite = suite_named(name)
        if suite in suites:
            raise ValueError(f"cipher suite {name} listed twice")
        suites.append(suite)
    return tuple(suites)


def signature_kind_for_key(public_key: object) -> SignatureKind | None:
    """Which signature a certificate key can make, or None if tlsotp cannot use it.

    The key policy is ``tlsotp.pki.keys.check_public_key``, the one the TTP issues under and
    the verifier checks: EC keys on P-256 or P-384 (ECDSA), RSA keys of 2048 to 8192 bits with
    exponent 65537 (RSA-PSS, and RSA-OAEP for transport suites).
    """
    try:
        key = check_public_key(public_key)
    except UnacceptableKey:
        return None
    return SignatureKind.ECDSA if isinstance(key, ec.EllipticCurvePublicKey) else SignatureKind.RSA_PSS


def suites_for_key(public_key: object, suites: Iterable[Suite] = ALL_SUITES) -> tuple[Suite, ...]:
    """The suites, in the given order, whose server authentication this key can provide."""
    kind = signature_kind_for_key(public_key)
    return tuple(s for s in suites if kind is not None and s.authentication is kind)


def groups_of(suites: Sequence[Suite]) -> tuple[Group, ...]:
    """ECDHE groups appearing among the suites, in order of first appearance."""
    groups: list[Group] = []
    for suite in suites:
        if suite.group is not None and suite.group not in groups:
            groups.append(suite.group)
    return tuple(groups)
