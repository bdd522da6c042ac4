"""Ways to damage DER that real attackers use, shared by the decoder tests (no tests here).

``with_version`` rewrites the version field of a certificate, CSR or CRL: cryptography refuses
an out-of-range version with ``x509.InvalidVersion``, which is *not* a ``ValueError``, so this
is the input that once escaped as a traceback.
"""

from __future__ import annotations


def _header_length(der: bytes, pos: int) -> int:
    first = der[pos + 1]
    return 2 if first < 0x80 else 2 + (first & 0x7F)


def version_offset(der: bytes) -> int:
    """Offset of the version INTEGER's value byte in a Certificate, CSR or CRL (v2)."""
    pos = _header_length(der, 0)  # the outer SEQUENCE
    pos += _header_length(der, pos)  # TBSCertificate / CertificationRequestInfo / TBSCertList
    if der[pos] == 0xA0:  # a certificate's version is EXPLICIT [0]
        pos += 2
    if der[pos : pos + 2] != b"\x02\x01":
        raise ValueError(f"no one-byte version INTEGER at offset {pos}: {der[pos:pos + 3].hex()}")
    return pos + 2


def with_version(der: bytes, version: int = 7) -> bytes:
    """The same DER with its version field set to ``version`` (one byte, 0..127)."""
    offset = version_offset(der)
    changed = bytearray(der)
    changed[offset] = version
    return bytes(changed)
