"""One whole client run, as ``tlsotp client`` and ``twistd tlsotp-client`` perform it, for embedders too.

enroll if needed -> fetch and verify the CRL -> connect -> handshake -> request -> verify.
Each step is awaited in turn; any refusal surfaces as one typed exception with one line of text.
``ClientRunSettings`` is a plain settings object: the commands build it from their options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cryptography import x509
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from tlsotp.handshake import DEFAULT_SUITES, Suite, TraceRecord
from tlsotp.pki.credentials import RootPin
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.services.credentials import obtain_credentials
from tlsotp.services.enrollment import DEFAULT_TIMEOUT, fetch_crl
from tlsotp.services.otp_client import ClientSettings, ServerEndpoint, SessionResult, confirm_otp, request_otp

log = Logger()

DEFAULT_TRANSACTION = "Rs 1,00,000 to your friend's account"
DEFAULT_SERVER = "tcp:host=127.0.0.1:port=7001"
DEFAULT_TTP = "tcp:host=127.0.0.1:port=7000"


@dataclass(frozen=True)
class ClientRunSettings:
    """What one client run needs: who we are (a data dir, enrolled or to enroll), the TTP, the
    server and what to ask it. ``confirm`` set: confirm that code instead of requesting one."""

    data_dir: Path
    server_name: str
    server: ServerEndpoint = DEFAULT_SERVER
    ttp: str = DEFAULT_TTP
    pin: RootPin | None = None
    token: str | None = None
    name: str | None = None
    key_type: KeyType = KeyType.EC_P256
    suites: Sequence[Suite] = DEFAULT_SUITES
    timeout_seconds: float = DEFAULT_TIMEOUT
    check_crl: bool = True
    transaction: str = DEFAULT_TRANSACTION
    confirm: str | None = None
    observer: Callable[[TraceRecord], None] | None = None


@dataclass(frozen=True)
class ClientRun:
    result: SessionResult
    crl_checked: bool


async def run_client(reactor: IReactorTime, settings: ClientRunSettings) -> ClientRun:
    """Enroll if the data dir holds no current certificate, fetch the CRL, run one session."""
    credentials = await obtain_credentials(
        reactor, data_dir=Path(settings.data_dir), ttp=settings.ttp, pin=settings.pin, token=settings.token,
        name=settings.name, role=Role.CLIENT, key_type=settings.key_type, timeout=settings.timeout_seconds,
    )
    crl: x509.CertificateRevocationList | None = None
    if not settings.check_crl:
        log.warn("CRL check disabled by --no-crl-check: a revoked server certificate would be accepted")
    else:
        crl = await fetch_crl(
            reactor, settings.ttp, pin=credentials.root, data_dir=Path(settings.data_dir),
            timeout=settings.timeout_seconds,
        )
    session = ClientSettings(
        key=credentials.key,
        chain=credentials.chain,
        root=credentials.root,
        server_name=settings.server_name,
        crl=crl,
        suites=settings.suites,
        timeout_seconds=settings.timeout_seconds,
        observer=settings.observer,
    )
    if settings.confirm is not None:
        result = await confirm_otp(reactor, settings.server, session, settings.transaction, settings.confirm)
    else:
        result = await request_otp(reactor, settings.server, session, settings.transaction)
    return ClientRun(result, crl is not None)
