"""Building the certificates and CRLs a certificate authority signs.

Pure functions of their inputs (keys, names, times, serials): the TTP daemon decides *whether*
to issue, this module only decides *what* an issued certificate looks like.
"""

from __future__ import annotations

import datetime
from typing import Iterable, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tlsotp.pki.keys import PrivateKey, PublicKey, signature_hash_for
from tlsotp.pki.roles import Role

# Issued certificates start this long before "now", to tolerate small clock skew between hosts.
BACKDATE = datetime.timedelta(minutes=5)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsotp"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def build_root(
    key: PrivateKey,
    common_name: str,
    *,
    days: int,
    now: datetime.datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """A self-signed root that may sign end-entity certificates only (path length 0)."""
    subject = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return builder.sign(key, signature_hash_for(key))


def key_usage_for(public_key: PublicKey) -> x509.KeyUsage:
    """ECDSA keys sign; RSA keys sign (PSS) and receive wrapped keys (OAEP key transport)."""
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue_certificate(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    public_key: PublicKey,
    *,
    name: str,
    role: Role,
    days: int,
    now: datetime.datetime,
    serial: int | None = None,
    not_after_limit: datetime.datetime | None = None,
) -> x509.Certificate:
    """An end-entity certificate for ``name`` in ``role``; the caller has already authorised it.

    It expires ``days`` after ``now``, but never after the root, nor after ``not_after_limit``.
    """
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    if not_after_limit is not None:
        not_after = min(not_after, not_after_limit)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage_for(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([role.eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    return builder.sign(ca_key, signature_hash_for(ca_key))


class Revocation(NamedTuple):
    serial: int
    revoked_at: datetime.datetime
    reason: x509.ReasonFlags | None


def build_crl(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    revocations: Iterable[Revocation],
    *,
    now: datetime.datetime,
    next_update: datetime.timedelta,
    crl_number: int,
) -> x509.CertificateRevocationList:
    """A CRL valid from ``now`` for ``next_update``: verifiers refuse it once stale."""
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    for revocation in revocations:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(revocation.serial)
            .revocation_date(revocation.revoked_at)
        )
        if revocation.reason is not None and revocation.reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(revocation.reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, signature_hash_for(ca_key))


def is_ec(key: PrivateKey | PublicKey) -> bool:
    return isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey))
