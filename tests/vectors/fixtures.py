"""A fully deterministic PKI and randomness for handshake tests and test vectors.

Everything here is a pure function of constants, built with the project's own CA code
(``tlsotp.pki.builders``): RSA keys are read from PEM files next to this module (RSA key
generation is slow and not reproducible), EC keys are derived from fixed scalars, serials and
dates are fixed, and the root's key is RSA so that certificate signatures (PKCS#1 v1.5) are
deterministic too. Certificates are verified with a ``PeerVerifier`` whose clock is pinned to
``VECTOR_TIME`` so the vectors never expire.

These keys are published test data: never use them for anything else.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tlsotp.handshake import EphemeralPrivateKey, Group
from tlsotp.pki.builders import Revocation, build_crl, build_root, issue_certificate
from tlsotp.pki.keys import PrivateKey
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier

VECTOR_TIME = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
SERVER_NAME = "bank.tlsotp.test"
CLIENT_NAME = "alice.tlsotp.test"
KEYS_DIR = Path(__file__).parent / "keys"

# Fixed private scalars for the EC certificate keys (any value in [1, n-1] will do).
_EC_SCALARS = {
    ("server", "ec-p256"): 0x5E_2F_E1_9A_0D_11_9C_D3_3F_9D_36_7B_1B_6E_4A_27_5C_8A_0E_6F_21_55_A2_74_C3_19_F0_1E_92_6B_77_01,
    ("server", "ec-p384"): 0x3A94_9F1C_0D2B_65A8_1E47_F03C_9B7E_24D1_6A5F_08C3_72E9_41BD_0C6A_F35E_9824_17DC_5B0E_3A71_C94F_26B8_01D7_E63A,
    ("client", "ec-p256"): 0x1C_6B_92_E4_7F_30_58_AD_0E_C1_74_29_B6_5F_83_E0_9A_12_DC_47_3B_F6_05_8E_C2_71_A9_34_6D_E8_50_3B,
    ("client", "ec-p384"): 0x7D21_C09A_34EF_618B_2C5D_E073_9F14_A6B8_03CE_5F92_71D0_8A3B_E64C_19F7_20A5_D38E_6B14_C97F_02E5_A836_4DB9_1F60,
    ("other-root", "ec-p256"): 0x42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42_42,
}
_CURVES = {"ec-p256": ec.SECP256R1, "ec-p384": ec.SECP384R1}

# Fixed ephemeral (ECDHE) private keys, per side and group.
_X25519_SEEDS = {"client": bytes(range(0x20, 0x40)), "server": bytes(range(0x40, 0x60))}
_EPHEMERAL_SCALARS = {
    ("client", Group.P256): 0x0C1E_47A3_9B52_D8F0_6E13_A97C_24B5_08DF_31C6_7A9E_50F2_8B4D_E613_07AC_92F5_3E18,
    ("server", Group.P256): 0x2B9E_0F71_C4A8_5D36_E917_4C02_B8F5_63AE_170D_9C48_F2B6_3E85_0A71_D94C_26BF_E305,
    ("client", Group.P384): 0x51A3_E9C0_47F2_8B1D_06CE_93A5_7F48_2D0B_E6C1_94F7_3A28_5D0E_B973_C14F_2A86_5E0D_7B31_C9F4_08A2_6E5D_1B37_C94A,
    ("server", Group.P384): 0x1F6D_83A2_C05E_974B_2D18_F6C3_A09E_54B7_1C62_8DF0_3E95_A74B_06C1_D82F_5E39_A407_BC61_2D95_F04E_873A_16C2_5B9D,
}


def load_rsa_key(name: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((KEYS_DIR / f"{name}.pem").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@functools.cache
def certificate_key(owner: str, key_type: str) -> PrivateKey:
    """``owner`` is "server", "client" or "other-root"; ``key_type`` "ec-p256", "ec-p384" or "rsa-2048"."""
    if key_type == "rsa-2048":
        return load_rsa_key(f"{owner}-rsa-2048")
    return ec.derive_private_key(_EC_SCALARS[(owner, key_type)], _CURVES[key_type]())


def ephemeral_key(owner: str, group: Group) -> EphemeralPrivateKey:
    if group is Group.X25519:
        return X25519PrivateKey.from_private_bytes(_X25519_SEEDS[owner])
    curve = ec.SECP256R1() if group is Group.P256 else ec.SECP384R1()
    return ec.derive_private_key(_EPHEMERAL_SCALARS[(owner, group)], curve)


def fixed_ephemeral_keys(owner: str) -> "functools.partial[EphemeralPrivateKey]":
    """An ``ephemeral_keys`` factory that always returns this side's fixed key for the group."""
    return functools.partial(ephemeral_key, owner)


class ScriptedRandom:
    """A ``random_bytes`` replacement: SHAKE-256 of a label and a call counter.

    Deterministic and different per label, which is all test vectors need. Never for real use.
    """

    def __init__(self, label: str) -> None:
        self._label = label.encode()
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return hashlib.shake_256(self._label + b"/" + str(self.calls).encode()).digest(n)


class FixedRandom:
    """A ``random_bytes`` replacement that hands out given values in order (test vectors)."""

    def __init__(self, values: list[bytes]) -> None:
        self._values = list(values)

    def __call__(self, n: int) -> bytes:
        if not self._values:
            raise AssertionError("FixedRandom ran out of values")
        value = self._values.pop(0)
        if len(value) != n:
            raise AssertionError(f"FixedRandom value has {len(value)} bytes, caller wanted {n}")
        return value


@dataclass(frozen=True)
class Identity:
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]


# Serial numbers are fixed so certificates (and so the vectors) are reproducible.
_SERIALS = {("server", "ec-p256"): 0x1001, ("server", "ec-p384"): 0x1002, ("server", "rsa-2048"): 0x1003,
            ("client", "ec-p256"): 0x2001, ("client", "ec-p384"): 0x2002, ("client", "rsa-2048"): 0x2003}


@functools.cache
def root_key() -> rsa.RSAPrivateKey:
    return load_rsa_key("root-rsa-2048")


@functools.cache
def root() -> x509.Certificate:
    return build_root(root_key(), "tlsotp test root", days=3650, now=VECTOR_TIME, serial=0x01)


@functools.cache
def identity(owner: str, key_type: str) -> Identity:
    """A certificate for the server (``SERVER_NAME``) or the client (``CLIENT_NAME``)."""
    key = certificate_key(owner, key_type)
    role, name = (Role.SERVER, SERVER_NAME) if owner == "server" else (Role.CLIENT, CLIENT_NAME)
    cert = issue_certificate(
        root_key(), root(), key.public_key(), name=name, role=role, days=365, now=VECTOR_TIME, serial=_SERIALS[(owner, key_type)]
    )
    return Identity(key, (cert,))


@functools.cache
def other_root_identity() -> Identity:
    """A server certificate from a root the client does not trust (for unknown_ca)."""
    ca_key = certificate_key("other-root", "ec-p256")
    other = build_root(ca_key, "tlsotp impostor root", days=3650, now=VECTOR_TIME, serial=0x99)
    key = certificate_key("server", "ec-p256")
    cert = issue_certificate(ca_key, other, key.public_key(), name=SERVER_NAME, role=Role.SERVER, days=365, now=VECTOR_TIME, serial=0x9901)
    return Identity(key, (cert,))


def crl_revoking(*certificates: x509.Certificate) -> x509.CertificateRevocationList:
    return build_crl(
        root_key(), root(), [Revocation(c.serial_number, VECTOR_TIME, None) for c in certificates],
        now=VECTOR_TIME, next_update=datetime.timedelta(days=30), crl_number=1,
    )


def _vector_clock() -> datetime.datetime:
    return VECTOR_TIME


def server_verifier(crl: x509.CertificateRevocationList | None = None) -> PeerVerifier:
    """What the client uses to check the server."""
    return PeerVerifier(root(), Role.SERVER, expected_names=[SERVER_NAME], crl=crl, clock=_vector_clock)


def client_verifier(crl: x509.CertificateRevocationList | None = None) -> PeerVerifier:
    """What the server uses to check the client."""
    return PeerVerifier(root(), Role.CLIENT, crl=crl, clock=_vector_clock)
