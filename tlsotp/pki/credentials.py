"""A party's credentials and the files that hold them, and the pin on the TTP's root.

Files in a party's data dir::

    key.pem   the party's private key (mode 0600)
    cert.pem  its certificate from the TTP (leaf first)
    ca.pem    the TTP root it was verified against; renewal and CRL checks pin this
    crl.pem   the last CRL fetched and verified (written by fetch_crl)

``cert.pem`` is written last and marks the dir as enrolled. A new key is written as
``key.pem.next`` (0600) *before* the request that certifies it is sent, and renamed into place
only after ``cert.pem``; if a crash falls between the two, loading finishes the rename, so a key
and certificate that do not belong together are never used. A ``key.pem.next`` that belongs to
no certificate yet is a *pending* key: its request went out but no answer came back (or was
refused). The next enrollment or renewal certifies that same key again, which makes re-running
the command after a lost reply the same request once more, answered with the certificate the
TTP already issued.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from tlsotp.alerts import Alert, AlertError
from tlsotp.pki import der, pem
from tlsotp.pki.fingerprint import PREFIX, fingerprint, matches_fingerprint, parse_fingerprint
from tlsotp.pki.keys import PrivateKey
from tlsotp.pki.names import check_peer_name
from tlsotp.pki.roles import Role

KEY_FILE = "key.pem"
NEXT_KEY_FILE = "key.pem.next"
CERT_FILE = "cert.pem"
CA_FILE = "ca.pem"
CRL_FILE = "crl.pem"
DIR_MODE = 0o700


@dataclass(frozen=True)
class RootPin:
    """The TTP root a requester trusts, known by its SHA-256 fingerprint."""

    sha256: bytes

    @classmethod
    def from_fingerprint(cls, text: str) -> RootPin:
        return cls(parse_fingerprint(text))

    @classmethod
    def from_ca_file(cls, path: Path) -> RootPin:
        return cls.from_certificate(pem.load_certificate(Path(path)))

    @classmethod
    def from_certificate(cls, root: x509.Certificate) -> RootPin:
        return cls(parse_fingerprint(fingerprint(root)))

    def check(self, root: x509.Certificate) -> None:
        """Raise ``AlertError(unknown_ca)`` unless ``root`` is the pinned one (constant time)."""
        if not matches_fingerprint(root, self.sha256):
            raise AlertError(Alert.unknown_ca, f"the TTP presented root {fingerprint(root)}, not the pinned {self}")

    def __str__(self) -> str:
        return PREFIX + self.sha256.hex()


@dataclass(frozen=True)
class Credentials:
    key: PrivateKey
    chain: list[x509.Certificate]  # leaf first
    root: x509.Certificate

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def spki(public_key: CertificatePublicKeyTypes) -> bytes:
    """A public key's DER SubjectPublicKeyInfo: equal bytes, equal key."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@functools.lru_cache(maxsize=1024)
def certified_name(cert: x509.Certificate) -> str:
    """The one DNS name a TTP certificate is for. Cached per certificate (``x509.Certificate``
    hashes and compares its DER): the bank asks it for every session of a returning client; a
    refusal raises and is not cached."""
    return _certified_name(cert)


#: Leaf names of received chains by the leaf's exact DER (``der.by_leaf_der``).
MAX_KNOWN_LEAF_NAMES = 1024
_names_by_der: dict[bytes, str] = {}


def leaf_name(chain: Sequence[x509.Certificate]) -> str:
    """``certified_name`` of the chain's leaf; for a chain as the handshake parsed it (a
    ``ParsedChain``), found by the leaf's wire DER."""
    if not isinstance(chain, der.ParsedChain):
        return certified_name(chain[0])
    return der.by_leaf_der(_names_by_der, MAX_KNOWN_LEAF_NAMES, chain, _certified_name)


def _certified_name(cert: x509.Certificate) -> str:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        names = []
    if len(names) != 1:
        raise AlertError(Alert.bad_certificate, f"certificate names {names}, not exactly one DNS name")
    try:
        return check_peer_name(names[0])
    except ValueError as exc:
        raise AlertError(Alert.bad_certificate, f"certificate name refused: {exc}") from None


def certified_role(cert: x509.Certificate) -> Role:
    """The one role a TTP certificate's ExtendedKeyUsage grants."""
    try:
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    roles = [role for role in Role if [role.eku] == usages]
    if len(roles) != 1:
        raise AlertError(Alert.unsupported_certificate, "certificate does not grant exactly one tlsotp role")
    return roles[0]


def load_credentials(data_dir: Path) -> Credentials | None:
    """The party's credentials, or None if ``data_dir`` is not enrolled; PEMError if broken."""
    data_dir = Path(data_dir)
    cert_path = data_dir / CERT_FILE
    if not cert_path.exists():
        return None
    chain = pem.load_certificates(cert_path)
    root = pem.load_certificate(data_dir / CA_FILE)
    _finish_key_rename(data_dir, chain[0])
    key = pem.load_private_key(data_dir / KEY_FILE)
    if spki(key.public_key()) != spki(chain[0].public_key()):
        raise pem.PEMError(f"{data_dir / KEY_FILE} does not belong to {cert_path}")
    try:
        chain[0].verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise pem.PEMError(f"{cert_path} is not issued by {data_dir / CA_FILE}") from None
    return Credentials(key, chain, root)


def _finish_key_rename(data_dir: Path, leaf: x509.Certificate) -> None:
    pending = data_dir / NEXT_KEY_FILE
    if not pending.exists():
        return
    try:
        key = pem.load_private_key(pending)
    except pem.PEMError:
        return
    if spki(key.public_key()) == spki(leaf.public_key()):
        os.replace(pending, data_dir / KEY_FILE)


def pending_key(data_dir: Path) -> PrivateKey | None:
    """The key an earlier enrollment or renewal sent without getting its certificate, if any."""
    path = Path(data_dir) / NEXT_KEY_FILE
    if not path.exists():
        return None
    return pem.load_private_key(path)


def write_pending_key(data_dir: Path, key: PrivateKey) -> None:
    """Keep a new key (0600, fsynced) before asking the TTP to certify it."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    pem.write_private_key(data_dir / NEXT_KEY_FILE, key)


def write_credentials(data_dir: Path, credentials: Credentials, *, new_key: bool) -> None:
    """Write root, certificate and (if ``new_key``) key so that a crash never mixes old and new."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if new_key:
        pem.write_private_key(data_dir / NEXT_KEY_FILE, credentials.key)
    pem.write_certificates(data_dir / CA_FILE, [credentials.root])
    pem.write_certificates(data_dir / CERT_FILE, credentials.chain)
    if new_key:
        os.replace(data_dir / NEXT_KEY_FILE, data_dir / KEY_FILE)
        fd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
