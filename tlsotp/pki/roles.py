"""The two roles a certificate can be issued for, and the key usage each implies."""

from __future__ import annotations

import enum

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"

    @property
    def eku(self) -> ObjectIdentifier:
        """The one ExtendedKeyUsage a certificate for this role carries and is checked for."""
        if self is Role.SERVER:
            return ExtendedKeyUsageOID.SERVER_AUTH
        return ExtendedKeyUsageOID.CLIENT_AUTH
