"""The bank server daemon as a library: ``BankServerSettings`` and ``build_service(settings)``.

``twistd -n tlsotp-server`` (``tlsotp.commands.server_daemon``) only turns its argv into a
``BankServerSettings``; an embedder builds the same service (see also ``tlsotp.server``)::

    from tlsotp.server import BankServerSettings, build_service

    settings = BankServerSettings(data_dir=path, name="bank.example", ttp="tcp:host=ttp.example:port=7000")
    service = build_service(settings)        # a MultiService
    service.setServiceParent(application)    # or service.startService(); await service.ready

On start it loads its credentials (or enrolls with the token), opens the OTP database (SQLite in
the data dir, or with ``database`` a PostgreSQL one shared by several servers, see
docs/postgresql.rst), fetches the TTP's CRL, and listens; ``ready`` fires then (or fails with why not): that is the one place
where start-up is complete.

Under twistd (``blocking_start=True``, the tap's choice) all of that happens inside
``startService``, before the reactor runs, and a failure raises ``shutdown.StartupFailed``
there: twistd's launcher, daemonized, waits for ``startService`` to return, so it exits 0 only
once the server listens, and 1 with the reason otherwise. The TTP calls of start-up then use a
blocking socket with the same deadline (``tlsotp.services.ttp_client.BlockingTTP``), and SIGTERM
or SIGINT meanwhile stops the start-up. Started with its reactor running (an embedder, tests),
start-up runs on the reactor and a failure goes to ``on_fatal``. The service is a
``MultiService`` of Twisted's own parts, added as start-up reaches them: the OTP store's
``DatabaseWorker``, a ``ListeningService`` (``StreamServerEndpointService``), two
``PeriodicTask`` (``TimerService``) children that refresh the CRL and renew the certificate
before expiry, swapping both into the factory so that new sessions use them without a restart,
and a third that prunes OTP rows ``otp_retention`` seconds past their expiry (keeping what the
lockout rule reads, see ``tlsotp.otp.store.prune``), so ``otp.sqlite3`` stays bounded.
With ``metrics`` set, a ``tlsotp.services.metrics.MetricsService`` (``/metrics``, ``/health``)
joins them once the server listens.

Stopping it (SIGTERM under twistd) drains: the port closes first (new connections are refused
at once) and a CRL fetch or renewal under way is cancelled; sessions in flight get up to
``drain_timeout`` seconds to finish, then those left are closed; the OTP store closes last,
after what those sessions asked of it. ``stopService`` fires when all that is done.
"""

from __future__ import annotations

import datetime
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Sequence, cast

from cryptography import x509
from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsotp.alerts import AlertError
from tlsotp.database_url import PostgresTarget
from tlsotp.handshake import DEFAULT_SUITES, Suite, suites_for_key
from tlsotp.otp.store import PRUNE_BATCH
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
from tlsotp.services.daemon_services import DEFAULT_DRAIN_TIMEOUT, ConnectionDrain, ListeningService, PeriodicTask
from tlsotp.services.enrollment import Credentials, RootPin, TTPEndpoint, fetch_crl, renew
from tlsotp.services.events import BankEvents
from tlsotp.services.listen import listen_endpoint
from tlsotp.services.otp_authority import OTPPolicy
from tlsotp.services.otp_backends import OTPStore, open_otp_store
from tlsotp.services.ttp_client import BlockingTTP, TTPUnavailable

if TYPE_CHECKING:  # imported when --metrics is given: prometheus-client is an extra
    from tlsotp.services.metrics import BankMetrics, MetricsService

__all__ = ["CRL_FILE", "DEFAULT_LISTEN", "BankServerService", "BankServerSettings", "build_service"]

log = Logger(namespace="tlsotp.services.bank_server")

CRL_FILE = "crl.pem"
DEFAULT_LISTEN = "tcp:7001:interface=127.0.0.1:backlog=1024"  # a burst of connects must not overflow the default 50
DEFAULT_TTP = "tcp:host=127.0.0.1:port=7000"
PROGRAM = "tlsotp-server"
DEFAULT_TTP_UNREACHABLE_AFTER = 1800.0
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
    #: Where to serve /metrics and /health (an endpoint string; None: not at all). Needs
    #: prometheus-client (tlsotp[metrics]); see tlsotp.services.metrics.
    metrics: str | None = None
    #: Seconds CRL refreshes and renewals may fail in a row before /health reports 503.
    ttp_unreachable_after: float = DEFAULT_TTP_UNREACHABLE_AFTER
    #: Log each transaction's text with its OTP's issue and confirmation (personal data: off).
    log_transactions: bool = False
    #: The OTPs in a PostgreSQL database that several servers share (None: SQLite in data_dir).
    database: PostgresTarget | None = None
    #: The OTP pepper (None: the data dir's); with ``database``, every server needs a copy of one file.
    otp_pepper_file: Path | None = None
    #: Worker processes serving sessions (1: this process serves them; see tlsotp.services.workers).
    workers: int = 1
    #: Seconds an OTP row is kept past its expiry before the background prune deletes it.
    otp_retention: float = DEFAULT_OTP_RETENTION

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers is at least 1")
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "name", check_dns_name(self.name))
        if self.allowed_clients is not None:
            object.__setattr__(self, "allowed_clients", frozenset(map(check_dns_name, self.allowed_clients)))
        object.__setattr__(self, "suites", tuple(self.suites))
        if not self.otp_retention > 0:
            raise ValueError("the OTP retention must be longer than 0 s")


def build_service(
    settings: BankServerSettings, reactor: Any = None, on_fatal: Callable[[], None] | None = None,
    *, blocking_start: bool = False,
) -> BankServerService:
    """The bank server's service; ``on_fatal`` runs when start-up fails once the reactor runs
    (the twistd plugin's stops the process with status 1). Failures also fail ``ready``.
    ``blocking_start``: start-up completes (or raises) inside ``startService``, for a
    ``startService`` called before the reactor runs (twistd).

    For ``settings.workers > 1`` build a ``tlsotp.services.workers.WorkerSupervisor`` instead
    (it needs the command that runs one worker, as ``twistd tlsotp-server`` gives it)."""
    # Any: a daemon's reactor must be IReactorTime, IReactorFromThreads and IReactorTCP at once,
    # and zope interfaces have no intersection type (every real reactor is all three).
    if reactor is None:
        from twisted.internet import reactor
    if settings.workers > 1:
        raise ValueError("several workers: build a tlsotp.services.workers.WorkerSupervisor")
    return BankServerService(settings, reactor, on_fatal=on_fatal, blocking_start=blocking_start)


class StartupInterrupted(Exception):
    """SIGTERM or SIGINT arrived during a blocking start-up."""


class BankServerService(service.MultiService):
    def __init__(
        self, settings: BankServerSettings, reactor: Any, on_fatal: Callable[[], None] | None = None,
        *, blocking_start: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.settings = settings
        self.reactor = reactor
        self.on_fatal = on_fatal
        self.blocking_start = blocking_start
        self.data_dir = settings.data_dir
        self.factory: OTPServerFactory | None = None
        self.connections: ConnectionDrain | None = None
        self.authority: OTPStore | None = None
        self.listener: ListeningService | None = None
        #: The credentials in use (after start-up, and after each renewal).
        self.credentials: Credentials | None = None
        self.timers: list[PeriodicTask] = []
        self.metrics_service: MetricsService | None = None
        #: The reactor's time of the first TTP call (CRL refresh, renewal) failing since the last success.
        self.ttp_failing_since: float | None = None
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
        self.metrics_service = None
        self.ttp_failing_since = None
        self.credentials = None
        self._stopping = False
        if self.blocking_start:
            self._start_now()
            return
        self._starting = Deferred.fromCoroutine(self._start(self.settings.ttp))
        self._starting.addCallbacks(self._started, self._start_failed)

    def _start_now(self) -> None:
        """The whole start-up, before the reactor runs: it returns listening, or raises."""
        outcome: list[object] = []

        def interrupted(signum: int, frame: object) -> None:
            raise StartupInterrupted(signal.Signals(signum).name)

        # twistd installs its own handlers only when the reactor runs; until then SIGTERM would
        # kill the process outright, pidfile left behind (handlers exist on the main thread only).
        stoppers = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
        previous = {signum: signal.signal(signum, interrupted) for signum in stoppers}
        try:
            try:
                ttp = BlockingTTP(self.settings.ttp)
            except TTPUnavailable as exc:
                raise shutdown.startup_failed(PROGRAM, exc) from None
            Deferred.fromCoroutine(self._start(ttp)).addBoth(outcome.append)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if not outcome:  # something waited on the reactor: a bug, refuse rather than hang
            outcome.append(Failure(RuntimeError("start-up did not complete before the reactor runs")))  # type: ignore[no-untyped-call]
        result = outcome[0]
        if isinstance(result, Failure):
            # What had started: no reactor will run to stop it (the process exits next).
            if self.listener is not None:
                self.listener.stopService()  # the port itself closes when the process exits
            if self.authority is not None:
                self.authority.stop_now()  # else its thread would keep the process alive
            self.ready.errback(result)
            self.ready.addErrback(lambda _: None)  # told by raising, just below
            if result.check(StartupInterrupted):  # type: ignore[no-untyped-call]
                raise shutdown.stopped_while_starting(PROGRAM) from None
            raise shutdown.startup_failed(PROGRAM, result.value or RuntimeError(result.getErrorMessage())) from None
        self._started(None)
        shutdown.startup_done()

    def _started(self, _: None) -> None:
        self._starting = None
        self.ready.callback(None)  # start-up complete: listening, the OTP store open

    def _start_failed(self, failure: Failure) -> None:
        self._starting = None
        if self._stopping and failure.check(CancelledError):  # type: ignore[no-untyped-call]
            log.info("tlsotp-server stopped while starting")
            self.ready.errback(failure)
            return
        shutdown.fail_late(PROGRAM, failure.value or RuntimeError(failure.getErrorMessage()), self.on_fatal)
        self.ready.errback(failure)

    async def _start(self, ttp: TTPEndpoint) -> None:
        s = self.settings
        credentials = await obtain_credentials(
            self.reactor, data_dir=s.data_dir, ttp=ttp, pin=s.pin, token=s.token,
            name=s.name, role=Role.SERVER, key_type=s.key_type, timeout=s.timeout,
        )
        usable = suites_for_key(credentials.chain[0].public_key(), s.suites)
        if not usable:
            raise StartupError(
                f"none of the configured suites can be authenticated by this {credentials.chain[0].public_key().__class__.__name__}"
            )
        # The OTP database is opened and checked now, not on the first client's request.
        self.authority = open_otp_store(self.reactor, s.data_dir, s.otp_policy, s.database, s.otp_pepper_file)
        self.authority.worker.setServiceParent(self)  # type: ignore[no-untyped-call]
        crl = await self._initial_crl(credentials, ttp)
        events = BankEvents()
        metrics: BankMetrics | None = None
        if s.metrics is not None:
            from tlsotp.services.metrics import BankMetrics  # prometheus-client only when asked for

            events = metrics = BankMetrics(
                self, self.reactor, renew_before=s.renew_before, ttp_unreachable_after=s.ttp_unreachable_after
            )
        self.credentials = credentials
        self.connections = ConnectionDrain(self.reactor)
        self.factory = OTPServerFactory.from_options(
            ServerIdentity(credentials.key, credentials.chain, credentials.root), self.authority, usable, crl, s,
            events=events, connections=self.connections,
        )
        try:
            endpoint = listen_endpoint(self.reactor, s.listen)
        except ValueError as exc:
            raise StartupError(f"bad --listen endpoint {s.listen!r}: {exc}") from None
        self.listener = ListeningService(endpoint, self.factory)
        self.listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        try:
            port = await self.listener.listening
        except Exception as exc:
            raise StartupError(f"cannot listen on {s.listen}: {exc}") from None
        await self.serve(port)
        log.info(
            "tlsotp-server {name} listening on {where}, suites: {suites}{how}",
            name=s.name, where=describe_address(cast(Any, port).getHost()),
            suites=", ".join(suite.name for suite in usable), how=self.serving_how(),
        )
        if metrics is not None and s.metrics is not None:
            await self._serve_metrics(metrics, s.metrics)
        # The CRL was fetched just now: the first refresh is one interval away.
        self.timers = [
            PeriodicTask(s.crl_refresh, self.refresh_crl, clock=self.reactor, skip_first=True),
            PeriodicTask(s.renew_check, self.renew_if_due, clock=self.reactor, skip_first=True),
            # At once too: a daemon restarted more often than the interval still prunes.
            PeriodicTask(min(s.otp_retention, MAX_PRUNE_INTERVAL), self.prune_otps, clock=self.reactor),
        ]
        for timer in self.timers:
            timer.setServiceParent(self)  # type: ignore[no-untyped-call]

    async def serve(self, port: IListeningPort) -> None:
        """Called once listening; sessions are served by this process (``tlsotp.services.workers``
        overrides it to hand the socket to worker processes instead)."""

    def serving_how(self) -> str:
        """The end of the "listening" log line: how sessions are served."""
        return ""

    def use_crl(self, crl: x509.CertificateRevocationList) -> None:
        """A refreshed CRL (already verified and written to the data dir): new sessions use it."""
        assert self.factory is not None
        self.factory.crl = crl

    def use_credentials(self, credentials: Credentials) -> None:
        """Renewed credentials (already written to the data dir): new sessions use them."""
        self.credentials = credentials
        assert self.factory is not None
        self.factory.identity = ServerIdentity(credentials.key, credentials.chain, credentials.root)

    async def drain(self) -> None:
        """Once the port is closed: let the sessions in flight finish, up to the deadline."""
        if self.connections is not None:
            await self.connections.drain(self.settings.drain_timeout)

    async def _serve_metrics(self, metrics: BankMetrics, endpoint: str) -> None:
        try:
            self.metrics_service = metrics.service(endpoint, PROGRAM)
        except ValueError as exc:
            raise StartupError(f"bad --metrics endpoint {endpoint!r}: {exc}") from None
        self.metrics_service.setServiceParent(self)  # type: ignore[no-untyped-call]
        try:
            await self.metrics_service.listening
        except Exception as exc:
            raise StartupError(f"cannot listen on --metrics {endpoint}: {exc}") from None

    def _ttp_failed(self, task: str) -> None:
        if self.ttp_failing_since is None:
            self.ttp_failing_since = self.reactor.seconds()
        assert self.factory is not None
        self.factory.events.ttp_failed(task)

    async def _initial_crl(self, credentials: Credentials, ttp: TTPEndpoint) -> x509.CertificateRevocationList:
        try:
            return await fetch_crl(
                self.reactor, ttp, pin=credentials.root, data_dir=self.data_dir,
                timeout=self.settings.timeout,
            )
        except (CancelledError, StartupInterrupted):
            raise
        except Exception as exc:
            # Fall back to a stored CRL only while it is still fresh: fail closed otherwise.
            try:
                stored = verify_crl(load_crl(self.data_dir / CRL_FILE), credentials.root, utcnow())
            except (PEMError, AlertError):
                raise StartupError(f"cannot fetch the TTP's CRL and no fresh one is stored: {exc}") from None
            log.warn("cannot fetch the CRL ({error}); using the stored one until it goes stale", error=str(exc))
            self.ttp_failing_since = self.reactor.seconds()
            return stored

    async def refresh_crl(self) -> None:
        assert self.credentials is not None
        try:
            crl = await fetch_crl(
                self.reactor, self.settings.ttp, pin=self.credentials.root, data_dir=self.data_dir,
                timeout=self.settings.timeout,
            )
        except CancelledError:
            raise
        except Exception as exc:
            log.warn(
                "CRL refresh failed: {error}; keeping the current CRL, which stops validating clients once stale",
                error=str(exc),
            )
            self._ttp_failed("crl_refresh")
            return
        self.use_crl(crl)
        self.ttp_failing_since = None
        if self.factory is not None:
            self.factory.events.crl_refreshed()
        log.info("CRL refreshed: {n} revoked, next update {next}", n=len(list(crl)), next=crl.next_update_utc)

    async def renew_if_due(self) -> None:
        assert self.credentials is not None
        leaf = self.credentials.chain[0]
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
            self._ttp_failed("renewal")
            return
        self.use_credentials(credentials)
        self.ttp_failing_since = None
        if self.factory is not None:
            self.factory.events.certificate_renewed()
        log.info(
            "certificate renewed: serial {serial:x}, valid until {until}",
            serial=credentials.chain[0].serial_number, until=credentials.chain[0].not_valid_after_utc,
        )

    async def prune_otps(self) -> None:
        """Delete OTP rows expired more than ``otp_retention`` ago, on the store's own worker.

        Straight on the worker (``OTPStore.prune``), never through ``open()``, which would start a
        stopped worker again. The timer is stopped before the worker, so none is queued late."""
        assert self.authority is not None
        expired_before = int(time.time() - self.settings.otp_retention)
        removed = 0
        # In batches (``PRUNE_BATCH`` rows a statement), each its own call on the worker,
        # so the sessions' issues and confirmations queued meanwhile go between two batches
        # instead of waiting for all of a day's expired rows; a stop ends the loop.
        while not self._stopping:
            try:
                batch = await self.authority.prune(expired_before)
            except CancelledError:
                raise
            except Exception as exc:
                log.warn("pruning expired OTPs failed, will retry: {error}", error=str(exc))
                break
            removed += batch
            if batch < PRUNE_BATCH:
                break
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
        if self.metrics_service is not None:
            stopping.append(self.metrics_service.stopService())
        if self.listener is not None:
            stopping.append(self.listener.stopService())
        for d in stopping:
            await d
        # Then let the sessions in flight finish, up to the deadline.
        await self.drain()
        # Last, the OTP store, after the calls those sessions queued.
        if self.authority is not None:
            await self.authority.close()
