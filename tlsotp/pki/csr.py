"""Building and checking certificate signing requests.

The requester names itself in the CSR (subject CN and a DNS SAN); the TTP compares those names
with what the operator authorised, and checks the CSR's own signature (proof of possession).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from tlsotp.pki.keys import PrivateKey, PublicKey, UnacceptableKey, check_public_key, signature_hash_for

MAX_CSR_BYTES = 16384


class CSRRefused(ValueError):
    """A CSR that cannot be issued: garbage, bad signature, unacceptable key or names."""


class CSRBadSignature(CSRRefused):
    """The CSR's self-signature does not verify or uses a refused hash: no proof of possession."""


class CSRWeakKey(CSRRefused):
    """The CSR's key is outside tlsotp's key policy (weak RSA, an unoffered curve, ...)."""


class CSRNameMismatch(CSRRefused):
    """The CSR asks for other names than the one authorised, or for a non-DNS name."""


# A CSR's self-signature is its proof of possession: refuse hashes that no longer prove it.
ACCEPTED_CSR_HASHES = ("sha256", "sha384", "sha512")


def build_csr(key: PrivateKey, name: str) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, signature_hash_for(key))
    )


def load_csr(der: bytes) -> x509.CertificateSigningRequest:
    if len(der) > MAX_CSR_BYTES:
        raise CSRRefused(f"CSR of {len(der)} bytes exceeds {MAX_CSR_BYTES}")
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion):  # a bad version field is not a ValueError
        raise CSRRefused("not a DER certificate signing request") from None
    return csr


def requested_names(csr: x509.CertificateSigningRequest) -> set[str]:
    """Every name the CSR asks for: subject CNs and DNS SANs. Other SAN kinds are refused."""
    names: set[str] = set()
    try:
        for attribute in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            names.add(str(attribute.value))
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return names
    except ValueError as exc:
        raise CSRRefused(f"malformed CSR contents: {exc}") from None
    for general_name in san:
        if not isinstance(general_name, x509.DNSName):
            raise CSRNameMismatch(f"only DNS names may be requested, not {type(general_name).__name__}")
        names.add(general_name.value)
    return names


def check_csr(csr: x509.CertificateSigningRequest, expected_name: str) -> PublicKey:
    """Return the CSR's public key if it may be certified for exactly ``expected_name``."""
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType, UnsupportedAlgorithm) as exc:
        raise CSRRefused(f"unreadable CSR: {exc}") from None
    # The key policy first: it bounds RSA sizes before any signature work is spent on them.
    try:
        checked = check_public_key(public_key)
    except UnacceptableKey as exc:
        raise CSRWeakKey(f"weak or unsupported key: {exc}") from None
    try:
        signature_ok = csr.is_signature_valid
        hash_algorithm = csr.signature_hash_algorithm
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType, UnsupportedAlgorithm) as exc:
        raise CSRRefused(f"unreadable CSR: {exc}") from None
    if not signature_ok:
        raise CSRBadSignature("CSR signature does not verify (no proof of possession)")
    if hash_algorithm is None or hash_algorithm.name not in ACCEPTED_CSR_HASHES:
        used = "none" if hash_algorithm is None else hash_algorithm.name
        raise CSRBadSignature(f"CSR is signed with {used}; use SHA-256 or stronger")
    names = requested_names(csr)
    if names != {expected_name}:
        asked = ", ".join(sorted(names)) or "no name"
        raise CSRNameMismatch(f"CSR asks for {asked}; this authorisation is for {expected_name} only")
    return checked
