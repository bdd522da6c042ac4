"""The TTP daemon as a library: ``TTPSettings`` and ``build_service(settings)``.

``twistd -n tlsotp-ttp`` (``tlsotp.commands.ttp_daemon``) only turns its argv into a
``TTPSettings``; an embedder builds the same service::

    from tlsotp.services.ttp_service import TTPSettings, build_service
    from tlsotp.ttp.ca import load_ca

    settings = TTPSettings(data_dir=path, ca=load_ca(path), listen="tcp:7000:interface=127.0.0.1")
    service = build_service(settings)        # a MultiService
    service.setServiceParent(application)    # or service.startService() yourself

(``tlsotp.ttp`` itself stays free of Twisted; this module is its Twisted shell.)

The service is a ``MultiService`` of Twisted's own parts: a ``GroupWorker`` owning the
store (an ``Issuer`` over it: every decision runs there, one after another, and the requests
that arrive together are decided in one group transaction, each in its own savepoint, with one
COMMIT and one fsync, and answered only after it: ``Issuer.handle_group``; the reactor never
waits for SQLite or for signing), and a
``ListeningService`` (``StreamServerEndpointService``). With ``database`` (a PostgreSQL
``PostgresTarget``) the store is that database instead of the data dir's SQLite file: the
worker thread owns its one session, which reconnects by itself; an outage is logged once when it
begins and once when it ends, and requests meanwhile are refused with ``internal_error``
(docs/postgresql_ttp.rst). It listens in
``privilegedStartService``, before twistd drops privileges (with ``metrics`` set, so does a
``tlsotp.services.metrics.MetricsService`` serving ``/metrics`` and ``/health``). A ``PeriodicTask`` prunes old
tokens (``token_retention``, see ``tlsotp.ttp.store``) at start and every ``prune_interval``
seconds, as one more call on the same worker. Stopping it stops that timer first (a prune
already queued finishes before the store closes, and one asked for later is refused by the
stopped worker and dropped), then stops accepting, lets requests in flight finish for up to
``drain_timeout`` seconds, then closes the store. The store is opened in
``startService``; a failure to listen or to open it raises ``shutdown.StartupFailed`` there,
so that twistd's launcher (daemonized) returns only once start-up is over, with exit status 1
if it failed.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsotp.database_url import PostgresTarget
from tlsotp.services import shutdown
from tlsotp.services.addresses import describe_address
from tlsotp.services.connection_slots import DEFAULT_FIRST_MESSAGE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS
from tlsotp.services.daemon_services import DEFAULT_DRAIN_TIMEOUT, ConnectionDrain, ListeningService, PeriodicTask
from tlsotp.services.listen import listen_endpoint
from tlsotp.services.sqlite_worker import GroupWorker, WorkerNotRunning
from tlsotp.services.ttp_server import DEFAULT_TIMEOUT, EnrollmentServerFactory
from tlsotp.ttp.ca import CertificateAuthority, TTPPaths
from tlsotp.ttp.issuer import DEFAULT_CERT_DAYS, DEFAULT_MAX_LINEAGE, Issuer, Outcome
from tlsotp.ttp.postgres_store import PostgresStore
from tlsotp.ttp.store import Store, StoreError

if TYPE_CHECKING:  # imported when --metrics is given: prometheus-client is an extra
    from tlsotp.services.metrics import MetricsService

__all__ = ["DEFAULT_CRL_HOURS", "DEFAULT_LISTEN", "DEFAULT_TOKEN_RETENTION", "TTPService", "TTPSettings", "build_service"]

DEFAULT_LISTEN = "tcp:7000:interface=127.0.0.1:backlog=1024"  # a burst of connects must not overflow the default 50
DEFAULT_CRL_HOURS = 24.0
DEFAULT_TOKEN_RETENTION = datetime.timedelta(days=30)
DEFAULT_PRUNE_INTERVAL = 3600.0
PROGRAM = "tlsotp-ttp"
#: The most requests one group transaction decides (about 1 ms of signing and SQL each): bounds
#: how long the first of them waits for its answer behind the others.
MAX_DECISION_GROUP = 32

log = Logger(namespace="tlsotp.ttp")


@dataclass(frozen=True)
class TTPSettings:
    """Everything the TTP daemon needs; the defaults are the command line's."""

    data_dir: Path
    ca: CertificateAuthority
    listen: str = DEFAULT_LISTEN
    cert_days: int = DEFAULT_CERT_DAYS
    #: Seconds a requester has to send its complete request, at most.
    timeout: float = DEFAULT_TIMEOUT
    crl_validity: datetime.timedelta = field(default_factory=lambda: datetime.timedelta(hours=DEFAULT_CRL_HOURS))
    max_lineage: datetime.timedelta = DEFAULT_MAX_LINEAGE
    first_message_timeout: float | None = DEFAULT_FIRST_MESSAGE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_address: int = DEFAULT_MAX_PER_ADDRESS
    #: Seconds requests in flight get to finish when the service stops (SIGTERM).
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    #: Where to serve /metrics and /health (an endpoint string; None: not at all). Needs
    #: prometheus-client (tlsotp[metrics]); see tlsotp.services.metrics.
    metrics: str | None = None
    #: How long a token is kept after it expired, was withdrawn or was spent (``Store.prune_tokens``).
    token_retention: datetime.timedelta = DEFAULT_TOKEN_RETENTION
    #: Seconds between two prunes of old tokens (the first runs at start).
    prune_interval: float = DEFAULT_PRUNE_INTERVAL
    #: A PostgreSQL database shared with other TTP processes, instead of the data dir's SQLite file.
    database: PostgresTarget | None = None


def build_service(
    settings: TTPSettings, reactor: Any = None, on_fatal: Callable[[], None] | None = None
) -> TTPService:
    """The TTP's service; ``on_fatal`` runs when listening fails after the reactor started
    (the twistd plugin's stops the process with status 1)."""
    # Any: a daemon's reactor must be IReactorTime, IReactorFromThreads and IReactorTCP at once,
    # and zope interfaces have no intersection type (every real reactor is all three).
    if reactor is None:
        from twisted.internet import reactor
    return TTPService.from_settings(reactor, settings, on_fatal=on_fatal)


def span_text(span: datetime.timedelta) -> str:
    """A duration as the options take it: 30d, 12h, 90m or 45s."""
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _close_issuer(issuer: Issuer) -> None:
    issuer.store.close()


class TTPService(service.MultiService):
    """Listens on ``settings.listen`` and answers each request through the Issuer on one worker
    thread. ``TTPService(reactor, ca, data_dir, **fields)`` is ``build_service`` with a
    ``TTPSettings`` made of the same fields."""

    def __init__(
        self, reactor: Any, ca: CertificateAuthority, data_dir: Path, *,
        on_fatal: Callable[[], None] | None = None, **fields: Any,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._setup(reactor, TTPSettings(data_dir=Path(data_dir), ca=ca, **fields), on_fatal)

    @classmethod
    def from_settings(
        cls, reactor: Any, settings: TTPSettings, *, on_fatal: Callable[[], None] | None = None
    ) -> TTPService:
        return cls(reactor, settings.ca, settings.data_dir, on_fatal=on_fatal, **{
            name: getattr(settings, name) for name in settings.__dataclass_fields__ if name not in ("ca", "data_dir")
        })

    def _setup(self, reactor: Any, settings: TTPSettings, on_fatal: Callable[[], None] | None) -> None:
        self.reactor = reactor
        self.settings = settings
        self.on_fatal = on_fatal
        self.connections = ConnectionDrain(reactor)
        self.factory = EnrollmentServerFactory(
            self._decide, timeout=settings.timeout, first_message_timeout=settings.first_message_timeout,
            max_connections=settings.max_connections, max_per_address=settings.max_per_address,
            connections=self.connections,
        )
        self.worker: GroupWorker[Issuer, bytes] = GroupWorker(
            reactor, self._open_issuer, _close_issuer, Issuer.handle_group, "tlsotp-ttp-issuer", MAX_DECISION_GROUP
        )
        self.worker.setServiceParent(self)  # type: ignore[no-untyped-call]
        try:
            endpoint = listen_endpoint(reactor, settings.listen)
        except ValueError as exc:
            shutdown.refuse_to_start(PROGRAM, f"bad --listen endpoint {settings.listen!r}: {exc}")
        self.listener = ListeningService(endpoint, self.factory)
        self.listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.metrics_service: MetricsService | None = None
        if settings.metrics is not None:
            from tlsotp.services.metrics import TTPMetrics  # prometheus-client only when asked for

            metrics = TTPMetrics(self.worker, self.connections, reactor)
            self.factory.events = metrics
            try:
                self.metrics_service = metrics.service(settings.metrics, PROGRAM)
            except ValueError as exc:
                shutdown.refuse_to_start(PROGRAM, f"bad --metrics endpoint {settings.metrics!r}: {exc}")
            self.metrics_service.setServiceParent(self)  # type: ignore[no-untyped-call]
        # After the worker: MultiService starts children in order, so the first prune finds it running.
        self.pruning = PeriodicTask(settings.prune_interval, self.prune_tokens, clock=reactor)
        self.pruning.setServiceParent(self)  # type: ignore[no-untyped-call]
        self._listen_started = False

    # The settings, as attributes (the names the service had before settings existed).
    @property
    def ca(self) -> CertificateAuthority:
        return self.settings.ca

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def max_lineage(self) -> datetime.timedelta:
        return self.settings.max_lineage

    @property
    def port(self) -> IListeningPort | None:
        return self.listener.port

    def _open_issuer(self) -> Issuer:
        s = self.settings
        store: Store
        if s.database is None:
            store = Store.open(TTPPaths(s.data_dir).db)  # checked again: intact and writable
        else:  # checked again too: reachable, the schema migrated, this CA's
            store = PostgresStore.open_database(s.database, s.ca.fingerprint, on_event=self._database_event)
        return Issuer(s.ca, store, cert_days=s.cert_days, crl_validity=s.crl_validity, max_lineage=s.max_lineage)

    def _database_event(self, line: str, trouble: bool) -> None:
        """An outage of the database began (``trouble``) or ended: one line each, from any thread."""
        self.reactor.callFromThread(log.warn if trouble else log.info, "{line}", line=line)

    def privilegedStartService(self) -> None:
        # Listen before twistd drops privileges, and refuse to start at once if we can't.
        self._listen_started = True
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        failed_now: list[Failure] = []
        starting = True

        def listening(port: IListeningPort) -> None:
            where = describe_address(cast(Any, port).getHost())
            log.info(
                "tlsotp-ttp serving on {where}, root {fingerprint}, store {store}", where=where,
                fingerprint=self.ca.fingerprint,
                store=TTPPaths(self.data_dir).db if self.settings.database is None else self.settings.database.describe(),
            )

        def failed(failure: Failure) -> None:
            if starting:
                failed_now.append(failure)
            else:  # an endpoint that fails later: one line in the log, and exit 1
                shutdown.fail_late(
                    PROGRAM, RuntimeError(f"cannot listen on {self.settings.listen}: {failure.getErrorMessage()}"),
                    self.on_fatal,
                )

        self.listener.listening.addCallbacks(listening, failed)
        metrics_failed: list[Failure] = []
        if self.metrics_service is not None:
            def metrics_listen_failed(failure: Failure) -> None:
                if starting:
                    metrics_failed.append(failure)
                else:
                    shutdown.fail_late(
                        PROGRAM, RuntimeError(f"cannot listen on --metrics {self.settings.metrics}: {failure.getErrorMessage()}"),
                        self.on_fatal,
                    )

            self.metrics_service.listening.addErrback(metrics_listen_failed)
        starting = False
        if failed_now:  # TCP and UNIX endpoints fail at once: before twistd's launcher returns
            raise shutdown.startup_failed(
                PROGRAM, f"cannot listen on {self.settings.listen}: {failed_now[0].getErrorMessage()}"
            )
        if metrics_failed:
            raise shutdown.startup_failed(
                PROGRAM, f"cannot listen on --metrics {self.settings.metrics}: {metrics_failed[0].getErrorMessage()}"
            )

    def startService(self) -> None:
        if not self._listen_started:
            self.privilegedStartService()
        try:
            super().startService()  # type: ignore[no-untyped-call]
        except StoreError as exc:
            raise shutdown.startup_failed(PROGRAM, str(exc)) from None
        shutdown.startup_done()  # start-up complete: listening, the store open

    def _decide(self, payload: bytes) -> Deferred[Outcome]:
        return self.worker.submit(payload)

    async def prune_tokens(self) -> None:
        """One prune on the worker; a failure is one log line, and the next period tries again."""
        retention = self.settings.token_retention
        try:
            pruned = await self.worker.run(Issuer.prune_tokens, retention)
        except WorkerNotRunning:
            return  # stopping: nothing to prune any more
        except CancelledError:
            raise  # stopped meanwhile (the call queued still runs, before the store closes)
        except Exception as exc:
            log.warn("tlsotp-ttp: pruning old tokens failed: {error}", error=shutdown.describe_startup_error(exc))
            return
        if pruned.deleted or pruned.erased:
            log.info(
                "tlsotp-ttp: pruned tokens older than {retention}: {deleted} expired or withdrawn deleted, "
                "{erased} spent ones' MAC keys erased",
                retention=span_text(retention), deleted=pruned.deleted, erased=pruned.erased,
            )

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        self._listen_started = False
        await self.pruning.stopService()  # before the worker: no prune is queued after its close
        await self.listener.stopService()  # new connections are refused from here on
        if self.metrics_service is not None:
            await self.metrics_service.stopService()
        await self.connections.drain(self.settings.drain_timeout)
        await self.worker.stopService()  # after the decisions those requests queued
