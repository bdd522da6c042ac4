"""The bank server as a library: settings, the daemon's service, and its protocol factory.

``build_service(BankServerSettings(...))`` is what ``twistd -n tlsotp-server`` runs; the
factory and the OTP authority are the pieces to build your own listener from.
"""

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
    "RootPin",
    "ServerIdentity",
    "build_service",
]
