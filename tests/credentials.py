"""Certificates for tests, made with the project's own CA code (no TTP daemon needed).

Keys are generated once per test run and shared: RSA key generation is slow.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass

from cryptography import x509

from tlsotp.pki.builders import Revocation, build_crl, build_root, issue_certificate
from tlsotp.pki.keys import KeyType, PrivateKey, generate_private_key
from tlsotp.pki.roles import Role

NOW = datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Identity:
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]


@dataclass(frozen=True)
class TestCA:
    key: PrivateKey
    root: x509.Certificate

    def issue(self, name: str, role: Role, key_type: KeyType = KeyType.EC_P256, days: int = 7) -> Identity:
        key = cached_key(key_type, name)
        cert = issue_certificate(self.key, self.root, key.public_key(), name=name, role=role, days=days, now=NOW)
        return Identity(key, (cert,), self.root)

    def crl(
        self, *revoked: x509.Certificate, next_update: datetime.timedelta = datetime.timedelta(days=1)
    ) -> x509.CertificateRevocationList:
        return build_crl(
            self.key, self.root, [Revocation(c.serial_number, NOW, None) for c in revoked],
            now=NOW, next_update=next_update, crl_number=1,
        )


@functools.lru_cache(maxsize=None)
def cached_key(key_type: KeyType, purpose: str = "") -> PrivateKey:
    """One key per (type, purpose) for the whole run: RSA key generation is slow."""
    return generate_private_key(key_type)


@functools.lru_cache(maxsize=None)
def test_ca(label: str = "main") -> TestCA:
    key = cached_key(KeyType.EC_P256, f"ca-{label}")
    return TestCA(key, build_root(key, f"tlsotp test root {label}", days=30, now=NOW))
