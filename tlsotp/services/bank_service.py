"""The bank server daemon as a library: ``BankServerSettings`` and ``build_service(settings)``.

``twistd -n tlsotp-server`` (``tlsotp.commands.server_daemon``) only turns its argv into a
``BankServerSettings``; an embedder builds the same service (see also ``tlsotp.server``)::

    from tlsotp.server import BankServerSettings, build_service

    settings = BankServerSettings(data_dir=path, name="bank.example", ttp="tcp:host=ttp.example:port=7000")
    service = build_service(settings)        # a MultiService
    service.setServiceParent(application)    # or service.startService(); await service.ready

On start it loads its credentials (or enrolls with the token), opens the OTP database, fetches
the TTP's CRL, and listens; ``ready`` fires then (or fails with why not). The service is a
``MultiService`` of Twisted's own parts, added as start-up reaches them: the OTP store's
``DatabaseWorker``, a ``ListeningService`` (``StreamServerEndpointService``), two
``PeriodicTask`` (``TimerService``) children that refresh the CRL and renew the certificate
before expiry, swapping both into the factory so that new sessions use them without a restart,
and a third that prunes OTP rows ``otp_retention`` seconds past their expiry (keeping what the
lockout rule reads, see ``tlsotp.otp.store.prune``), so ``otp.sqlite3`` stays bounded.

Stopping it (SIGTERM under twistd) drains: the port closes first (new connections are refused
at once) and a CRL fetch or renewal under way is cancelled; sessions in flight get up to
``drain_timeout`` seconds to finish, then those left are closed; the OTP store closes last,
after what those sessions asked of it. ``stopService`` fires when all that is done.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence, cast

from cryptography import x509
from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsotp.alerts import AlertError
from tlsotp.handshake import DEFAULT_SUITES, Suite, suites_for_key
from tlsotp.otp import store
from tlsotp.pki.keys import KeyType
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.pem import PEMError, load_crl
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import utcnow, verify_crl
from tlsotp.services import shutdown
from tlsotp.services.addresses import describe_address
from tlsotp.services.bank_server import OTPServerFactory, ServerIdentity
from tlsotp.services.connection_slots import DEFAULT_FIRST_MESSAGE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS
from tlsotp.services.credentials import StartupError, obtain_credentials
from tlsotp.services.daemon_services import DEFAULT_DRAIN_TIMEOUT, DrainingFactory, ListeningService, PeriodicTask
from tlsotp.services.enrollment import Credentials, RootPin, fetch_crl, renew
from tlsotp.services.otp_authority import OTPAuthority, OTPPolicy

__all__ = ["CRL_FILE", "DEFAULT_LISTEN", "BankServerService", "BankServerSettings", "build_service"]

log = Logger(namespace="tlsotp.services.bank_server")

CRL_FILE = "crl.pem"
DEFAULT_LISTEN = "tcp:7001:interface=127.0.0.1:backlog=1024"  # a burst of connects must not overflow the default 50
DEFAULT_TTP = "tcp:host=127.0.0.1:port=7000"
PROGRAM = "tlsotp-server"
DEFAULT_OTP_RETENTION = 86400.0  # seconds past expiry: a day of expired OTPs to look into
MAX_PRUNE_INTERVAL = 3600.0  # prune at least hourly, sooner when the retention is shorter


@dataclass(frozen=True)
class BankServerSettings:
    """Everything the bank server needs; the defaults are the command line's."""

    data_dir: Path
    #: The server's DNS name, as minted in its token (e.g. bank.example).
    name: str
    ttp: str = DEFAULT_TTP
    #: The TTP root, pinned (needed to enroll; checked against the stored root otherwise).
    pin: RootPin | None = None
    #: A one-time enrollment token (first start only).
    token: str | None = None
    listen: str = DEFAULT_LISTEN
    key_type: KeyType = KeyType.EC_P256
    suites: Sequence[Suite] = tuple(DEFAULT_SUITES)
    #: Seconds for the handshake and each later wait, and for each request to the TTP.
    timeout: float = 30.0
    otp_policy: OTPPolicy = OTPPolicy()
    #: Accept only these client names (None: any client the TTP certified).
    allowed_clients: Collection[str] | None = None
    crl_refresh: float = 300.0
    renew_check: float = 3600.0
    renew_before: float = 2 * 86400.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_address: int = DEFAULT_MAX_PER_ADDRESS
    first_message_timeout: float | None = DEFAULT_FIRST_MESSAGE_TIMEOUT
    #: Seconds sessions in flight get to finish when the service stops (SIGTERM).
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    #: Seconds an OTP row is kept past its expiry before the background prune deletes it.
    otp_retention: float = DEFAULT_OTP_RETENTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "name", check_dns_name(self.name))
        if self.allowed_clients is not None:
            object.__setattr__(self, "allowed_clients", frozenset(map(check_dns_name, self.allowed_clients)))
        object.__setattr__(self, "suites", tuple(self.suites))
        if not self.otp_retention > 0:
            raise ValueError("the OTP retention must be longer than 0 s")


def build_service(
    settings: BankServerSettings, reactor: Any = None, on_fatal: Callable[[], None] | None = None
) -> BankServerService:
    """The bank server's service; ``on_fatal`` runs when start-up fails once the reactor runs
    (the twistd plugin's stops the process with status 1). Failures also fail ``ready``."""
    # Any: a daemon's reactor must be IReactorTime, IReactorFromThreads and IReactorTCP at once,
    # and zope interfaces have no intersection type (every real reactor is all three).
    if reactor is None:
        from twisted.internet import reactor
    return BankServerService(settings, reactor, on_fatal=on_fatal)


class BankServerService(service.MultiService):
    def __init__(self, settings: BankServerSettings, reactor: Any, on_fatal: Callable[[], None] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.settings = settings
        self.reactor = reactor
        self.on_fatal = on_fatal
        self.data_dir = settings.data_dir
        self.factory: OTPServerFactory | None = None
        self.connections: DrainingFactory | None = None
        self.authority: OTPAuthority | None = None
        self.listener: ListeningService | None = None
        self.timers: list[PeriodicTask] = []
        #: Fires once listening (or fails with why the server cannot start).
        self.ready: Deferred[None] = Deferred()
        self._starting: Deferred[None] | None = None
        self._stopping = False

    @property
    def port(self) -> IListeningPort | None:
        return None if self.listener is None else self.listener.port

    def startService(self) -> None:
        # Not MultiService.startService: the children are made, added and started as start-up
        # reaches them (a restart after a stop makes them afresh).
        for child in list(self):
            self.removeService(child)  # type: ignore[no-untyped-call]
        service.Service.startService(self)  # type: ignore[no-untyped-call]
        if self.ready.called:
            self.ready = Deferred()
        self.timers = []
        self.listener = self.connections = self.factory = self.authority = None
        self._stopping = False
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addCallbacks(self._started, self._start_failed)

    def _started(self, _: None) -> None:
        self._starting = None
        self.ready.callback(None)

    def _start_failed(self, failure: Failure) -> None:
        self._starting = None
        if self._stopping and failure.check(CancelledError):  # type: ignore[no-untyped-call]
            log.info("tlsotp-server stopped while starting")
            self.ready.errback(failure)
            return
        shutdown.fail_late(PROGRAM, failure.value or RuntimeError(failure.getErrorMessage()), self.on_fatal)
        self.ready.errback(failure)

    async def _start(self) -> None:
        s = self.settings
        credentials = await obtain_credentials(
            self.reactor, data_dir=s.data_dir, ttp=s.ttp, pin=s.pin, token=s.token,
            name=s.name, role=Role.SERVER, key_type=s.key_type, timeout=s.timeout,
        )
        usable = suites_for_key(credentials.chain[0].public_key(), s.suites)
        if not usable:
            raise StartupError(
                f"none of the configured suites can be authenticated by this {credentials.chain[0].public_key().__class__.__name__}"
            )
        # The OTP database is opened and checked now, not on the first client's request.
        self.authority = OTPAuthority(self.reactor, s.data_dir, s.otp_policy)
        self.authority.worker.setServiceParent(self)  # type: ignore[no-untyped-call]
        crl = await self._initial_crl(credentials)
        self.factory = OTPServerFactory(
            ServerIdentity(credentials.key, credentials.chain, credentials.root),
            self.authority,
            suites=usable,
            allowed_clients=s.allowed_clients,
            crl=crl,
            timeout_seconds=s.timeout,
            first_message_timeout=s.first_message_timeout,
            max_connections=s.max_connections,
            max_per_address=s.max_per_address,
        )
        self.connections = DrainingFactory(self.factory, self.reactor)
        try:
            endpoint = serverFromString(self.reactor, s.listen)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise StartupError(f"bad --listen endpoint {s.listen!r}: {exc}") from None
        self.listener = ListeningService(endpoint, self.connections)
        self.listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        try:
            port = await self.listener.listening
        except Exception as exc:
            raise StartupError(f"cannot listen on {s.listen}: {exc}") from None
        log.info(
            "tlsotp-server {name} listening on {where}, suites: {suites}",
            name=s.name, where=describe_address(cast(Any, port).getHost()),
            suites=", ".join(suite.name for suite in usable),
        )
        # The CRL was fetched just now: the first refresh is one interval away.
        self.timers = [
            PeriodicTask(s.crl_refresh, self.refresh_crl, clock=self.reactor, skip_first=True),
            PeriodicTask(s.renew_check, self.renew_if_due, clock=self.reactor, skip_first=True),
            # At once too: a daemon restarted more often than the interval still prunes.
            PeriodicTask(min(s.otp_retention, MAX_PRUNE_INTERVAL), self.prune_otps, clock=self.reactor),
        ]
        for timer in self.timers:
            timer.setServiceParent(self)  # type: ignore[no-untyped-call]

    async def _initial_crl(self, credentials: Credentials) -> x509.CertificateRevocationList:
        try:
            return await fetch_crl(
                self.reactor, self.settings.ttp, pin=credentials.root, data_dir=self.data_dir,
                timeout=self.settings.timeout,
            )
        except CancelledError:
            raise
        except Exception as exc:
            # Fall back to a stored CRL only while it is still fresh: fail closed otherwise.
            try:
                stored = verify_crl(load_crl(self.data_dir / CRL_FILE), credentials.root, utcnow())
            except (PEMError, AlertError):
                raise StartupError(f"cannot fetch the TTP's CRL and no fresh one is stored: {exc}") from None
            log.warn("cannot fetch the CRL ({error}); using the stored one until it goes stale", error=str(exc))
            return stored

    async def refresh_crl(self) -> None:
        assert self.factory is not None
        try:
            crl = await fetch_crl(
                self.reactor, self.settings.ttp, pin=self.factory.identity.root, data_dir=self.data_dir,
                timeout=self.settings.timeout,
            )
        except CancelledError:
            raise
        except Exception as exc:
            log.warn(
                "CRL refresh failed: {error}; keeping the current CRL, which stops validating clients once stale",
                error=str(exc),
            )
            return
        self.factory.crl = crl
        log.info("CRL refreshed: {n} revoked, next update {next}", n=len(list(crl)), next=crl.next_update_utc)

    async def renew_if_due(self) -> None:
        assert self.factory is not None
        leaf = self.factory.identity.chain[0]
        remaining = leaf.not_valid_after_utc - utcnow()
        if remaining > datetime.timedelta(seconds=self.settings.renew_before):
            return
        try:
            # A new key (of the same type) at each renewal: then a copy of an old key can neither
            # renew unnoticed (the TTP's reuse detection) nor outlive the next renewal.
            credentials = await renew(
                self.reactor, self.settings.ttp, data_dir=self.data_dir, new_key=True, timeout=self.settings.timeout
            )
        except CancelledError:
            raise
        except Exception as exc:
            log.warn("certificate renewal failed, will retry: {error}", error=str(exc))
            return
        self.factory.identity = ServerIdentity(credentials.key, credentials.chain, credentials.root)
        log.info(
            "certificate renewed: serial {serial:x}, valid until {until}",
            serial=credentials.chain[0].serial_number, until=credentials.chain[0].not_valid_after_utc,
        )

    async def prune_otps(self) -> None:
        """Delete OTP rows expired more than ``otp_retention`` ago, on the store's own worker.

        Straight on the worker, not through ``OTPAuthority``: its ``open()`` would start a
        stopped worker again. The timer is stopped before the worker, so none is queued late."""
        assert self.authority is not None
        expired_before = int(time.time() - self.settings.otp_retention)
        try:
            removed = await self.authority.worker.transact(store.prune, expired_before=expired_before)
        except CancelledError:
            raise
        except Exception as exc:
            log.warn("pruning expired OTPs failed, will retry: {error}", error=str(exc))
            return
        if removed:
            log.info("pruned {n} OTP record(s) expired over {retention:g} s ago", n=removed,
                     retention=self.settings.otp_retention)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        self._stopping = True
        if self._starting is not None:  # still enrolling or fetching: give up on it
            self._starting.cancel()
        # First stop accepting, and cancel a CRL fetch or renewal under way.
        stopping = [timer.stopService() for timer in self.timers]
        if self.listener is not None:
            stopping.append(self.listener.stopService())
        for d in stopping:
            await d
        # Then let the sessions in flight finish, up to the deadline.
        if self.connections is not None:
            await self.connections.drain(self.settings.drain_timeout)
        # Last, the OTP store, after the calls those sessions queued.
        if self.authority is not None:
            await self.authority.close()
