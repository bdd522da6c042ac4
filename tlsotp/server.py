"""The bank server as a library: settings, the daemon's service, and its protocol factory.

``build_service(BankServerSettings(...))`` is what ``twistd -n tlsotp-server`` runs; the
factory and the OTP authority are the pieces to build your own listener from. Several servers
share one PostgreSQL database with ``BankServerSettings(database=parse_database_url(url, password_file))``
(docs/postgresql.rst).
"""

from tlsotp.database_url import PostgresTarget, parse_database_url
from tlsotp.pki.credentials import RootPin
from tlsotp.services.bank_server import OTPServerFactory, OTPServerProtocol, ServerIdentity
from tlsotp.services.bank_service import BankServerService, BankServerSettings, build_service
from tlsotp.services.otp_authority import OTPAuthority, OTPPolicy

__all__ = [
    "BankServerService",
    "BankServerSettings",
    "OTPAuthority",
    "OTPPolicy",
    "OTPServerFactory",
    "OTPServerProtocol",
    "PostgresTarget",
    "RootPin",
    "ServerIdentity",
    "build_service",
    "parse_database_url",
]
