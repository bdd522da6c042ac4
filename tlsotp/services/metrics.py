"""``--metrics ENDPOINT``: ``/metrics`` (Prometheus text format) and ``/health`` for both daemons.

Imported only when ``--metrics`` is given, since prometheus-client is an extra
(``tlsotp[metrics]``). Each service has its own ``CollectorRegistry``, so two services in one
process (the demo, the tests) do not clash, and nothing lands in the library's global one.

The counters are fed by the real events (``tlsotp.services.events``: the bank server's
protocol, its CRL refresh and renewal, the TTP's replies). The gauges are read at scrape time
from values the reactor already holds (the current CRL and certificate, the connection
count), or, for the TTP's store (tokens outstanding, certificates revoked), from a snapshot the
store's worker thread refreshes after each enrollment or renewal and every
``STORE_REFRESH_SECONDS``: a scrape (served from the reactor's thread pool by
``prometheus_client.twisted.MetricsResource``) never touches SQLite. docs/operations.rst lists
every metric.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from tlsotp import database_checks
from tlsotp.pki.verify import utcnow
from tlsotp.services.addresses import describe_address
from tlsotp.services.bank_server import OTPServerFactory
from tlsotp.services.daemon_services import ListeningService, PeriodicTask
from tlsotp.services.events import BankEvents, TTPEvents
from tlsotp.services.health import HealthResource, certificate_problems, crl_problems, ttp_problems
from tlsotp.services.otp_backends import OTPStore
from tlsotp.services.sqlite_worker import DatabaseWorker
from tlsotp.ttp import wire
from tlsotp.ttp.issuer import Issuer, Outcome

__all__ = ["STORE_REFRESH_SECONDS", "BankMetrics", "MetricsService", "TTPMetrics"]

log = Logger(namespace="tlsotp.metrics")

#: How often the TTP's store snapshot (tokens outstanding, revoked) is refreshed at the least:
#: the operator's own commands (``tlsotp ttp token``, ``revoke``) change it from another process.
STORE_REFRESH_SECONDS = 15.0


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def _gauge(name: str, documentation: str, value: float | None) -> Iterable[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, documentation, value=value)


class _ScrapeTimeGauges:
    """A collector of gauges computed when scraped, from ``read()``."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return list(self._read())


class MetricsSite(Site):
    """A ``Site`` that writes no access-log line per scrape (a scrape every 15 s would be the log)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class MetricsService(service.MultiService):
    """The ``--metrics`` listener (``/metrics`` and ``/health``), and any periodic refresh."""

    def __init__(
        self, reactor: Any, endpoint: str, registry: CollectorRegistry, health: HealthResource,
        *, program: str, refresh: PeriodicTask | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.program = program
        self.endpoint = endpoint
        root = Resource()  # type: ignore[no-untyped-call]
        root.putChild(b"metrics", MetricsResource(registry))  # type: ignore[no-untyped-call]
        root.putChild(b"health", health)
        self.listener = ListeningService(serverFromString(reactor, endpoint), MetricsSite(root))  # type: ignore[no-untyped-call]
        self.listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        if refresh is not None:
            refresh.setServiceParent(self)  # type: ignore[no-untyped-call]
    @property
    def listening(self) -> Deferred[IListeningPort]:
        return self.listener.listening

    def _announce(self, port: IListeningPort) -> IListeningPort:
        # Worded so that no test's "listening on" pattern takes it for the daemon's own port.
        log.info(
            "{program} metrics and health at http://{where}/metrics and /health",
            program=self.program, where=describe_address(port.getHost()),
        )
        return port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        # A failure passes on untouched: the daemon says it in one line, and exits 1.
        self.listener.listening.addCallback(self._announce)

    def stopService(self) -> Deferred[None]:
        stopping: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        return stopping.addCallback(lambda _: None)


def database_problems(worker: DatabaseWorker[Any], probe: Callable[..., None], *args: Any) -> Deferred[list[str]]:
    """Run ``probe(resource, *args)`` on the database's own worker: [] or why it cannot be written."""
    if not worker.running:
        return succeed(["the database is not open"])
    return probe_problems(worker.run(probe, *args))


def probe_problems(probing: Deferred[None]) -> Deferred[list[str]]:
    """[] when the probe's write committed, or why the database cannot be written."""

    def ok(_: None) -> list[str]:
        return []

    def failed(failure: Failure) -> list[str]:
        if failure.check(database_checks.DatabaseUnusable):  # type: ignore[no-untyped-call]
            return [str(failure.value)]
        return [f"the database cannot be written: {failure.getErrorMessage()}"]

    return probing.addCallbacks(ok, failed)


# -- the bank server ---------------------------------------------------------------------------


class BankView(Protocol):
    """What the bank server's metrics read from its service (``BankServerService``)."""

    factory: OTPServerFactory | None
    authority: OTPStore | None
    ttp_failing_since: float | None


class BankMetrics(BankEvents):
    """The bank server's registry; its event methods are the counters and histograms."""

    def __init__(
        self, view: BankView, reactor: Any, *, renew_before: float, ttp_unreachable_after: float,
        wall_clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.view = view
        self.reactor = reactor
        self.renew_before = renew_before
        self.ttp_unreachable_after = ttp_unreachable_after
        self.wall_clock = wall_clock
        self.registry = r = CollectorRegistry()
        self.sessions = Counter(
            "tlsotp_sessions", "Connections ended, by outcome and alert.", ["outcome", "alert"], registry=r
        )
        self.handshake_seconds = Histogram(
            "tlsotp_handshake_seconds", "Time from accepting a connection to a completed handshake.", registry=r
        )
        self.session_seconds = Histogram(
            "tlsotp_session_seconds", "Time from accepting a connection to its end.", registry=r
        )
        self.otps_issued = Counter("tlsotp_otps_issued", "OTPs granted.", registry=r)
        self.otp_refusals = Counter(
            "tlsotp_otp_refusals", "OTP requests refused, by reason (locked, store_failed).", ["reason"], registry=r
        )
        self.confirmations = Counter(
            "tlsotp_otp_confirmations", "OTP confirmations answered, by status.", ["status"], registry=r
        )
        self.crl_refreshes = Counter("tlsotp_crl_refreshes", "CRL refreshes that succeeded.", registry=r)
        self.renewals = Counter("tlsotp_certificate_renewals", "Certificate renewals that succeeded.", registry=r)
        self.ttp_failures = Counter(
            "tlsotp_ttp_failures", "Calls to the TTP that failed, by task (crl_refresh, renewal).", ["task"], registry=r
        )
        r.register(_ScrapeTimeGauges(self._gauges))

    # Events (on the reactor thread).

    def handshake_done(self, seconds: float) -> None:
        self.handshake_seconds.observe(seconds)

    def session_ended(self, outcome: str, alert: str, seconds: float) -> None:
        self.sessions.labels(outcome=outcome, alert=alert).inc()
        self.session_seconds.observe(seconds)

    def otp_issued(self) -> None:
        self.otps_issued.inc()

    def otp_refused(self, reason: str) -> None:
        self.otp_refusals.labels(reason=reason).inc()

    def confirmation(self, status: str) -> None:
        self.confirmations.labels(status=status).inc()

    def crl_refreshed(self) -> None:
        self.crl_refreshes.inc()

    def certificate_renewed(self) -> None:
        self.renewals.inc()

    def ttp_failed(self, task: str) -> None:
        self.ttp_failures.labels(task=task).inc()

    # Gauges, read at scrape time (on a thread of the reactor's pool): only attribute reads.

    def _gauges(self) -> Iterable[Metric]:
        factory = self.view.factory
        yield GaugeMetricFamily(
            "tlsotp_open_connections", "Connections open now.", value=0 if factory is None else factory.open_connections
        )
        failing_since = self.view.ttp_failing_since
        yield GaugeMetricFamily(
            "tlsotp_ttp_failing_seconds", "How long calls to the TTP have been failing without a success (0: fine).",
            value=0 if failing_since is None else max(0.0, self.reactor.seconds() - failing_since),
        )
        if factory is None:
            return
        crl = factory.crl
        if crl is not None:
            yield GaugeMetricFamily(
                "tlsotp_crl_age_seconds", "Seconds since the current CRL was issued (its last update).",
                value=(self.wall_clock() - crl.last_update_utc).total_seconds(),
            )
            yield from _gauge("tlsotp_crl_number", "The current CRL's number.", crl_number(crl))
            if crl.next_update_utc is not None:
                yield GaugeMetricFamily(
                    "tlsotp_crl_next_update_timestamp_seconds", "When the current CRL goes stale (unix time).",
                    value=crl.next_update_utc.timestamp(),
                )
        yield GaugeMetricFamily(
            "tlsotp_certificate_not_after_timestamp_seconds", "When the server's certificate expires (unix time).",
            value=factory.identity.chain[0].not_valid_after_utc.timestamp(),
        )

    # /health

    def problems_now(self) -> list[str]:
        """The rules that need no database: CRL, certificate, TTP."""
        now = self.wall_clock()
        factory = self.view.factory
        if factory is None:
            return ["starting"]
        crl = factory.crl
        problems = crl_problems(None if crl is None else crl.next_update_utc, now)
        problems += certificate_problems(
            factory.identity.chain[0].not_valid_after_utc, now, datetime.timedelta(seconds=self.renew_before / 2)
        )
        problems += ttp_problems(self.view.ttp_failing_since, self.reactor.seconds(), self.ttp_unreachable_after)
        return problems

    def health(self) -> Deferred[list[str]]:
        problems = self.problems_now()
        authority = self.view.authority
        if authority is None:
            return succeed(problems or ["the database is not open"])
        if not authority.worker.running:
            return succeed(problems + ["the database is not open"])
        probing = probe_problems(authority.check_writable())
        return probing.addCallback(lambda database: problems + database)

    def service(self, endpoint: str, program: str) -> MetricsService:
        return MetricsService(
            self.reactor, endpoint, self.registry, HealthResource(self.health, self.reactor), program=program
        )


# -- the TTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSnapshot:
    tokens_outstanding: int
    certificates_revoked: int
    crl_number: int | None


def _store_snapshot(issuer: Issuer) -> StoreSnapshot:
    """On the store's worker thread."""
    store = issuer.store
    crl = store.current_crl()
    return StoreSnapshot(
        tokens_outstanding=len(store.outstanding_tokens(issuer.clock())),
        certificates_revoked=len(store.revocations()),
        crl_number=None if crl is None else crl.number,
    )


def _check_store_writable(issuer: Issuer) -> None:
    issuer.store.check_writable()


class _Connections(Protocol):
    @property
    def open_connections(self) -> int: ...


class TTPMetrics(TTPEvents):
    """The TTP's registry: replies by kind, refusals by code, and a snapshot of its store."""

    def __init__(self, worker: DatabaseWorker[Issuer], connections: _Connections, reactor: Any) -> None:
        self.worker = worker
        self.connections = connections
        self.reactor = reactor
        self.snapshot: StoreSnapshot | None = None
        self._refreshing: Deferred[None] | None = None
        self._again = False
        self.registry = r = CollectorRegistry()
        self.issued = Counter(
            "tlsotp_ttp_certificates_issued", "Certificates sent in reply to an enrollment.", registry=r
        )
        self.renewed = Counter("tlsotp_ttp_certificates_renewed", "Certificates sent in reply to a renewal.", registry=r)
        self.crls_served = Counter("tlsotp_ttp_crls_served", "CRLs sent.", registry=r)
        self.refusals = Counter("tlsotp_ttp_refusals", "Requests refused, by refusal code.", ["code"], registry=r)
        self.request_seconds = Histogram(
            "tlsotp_ttp_request_seconds", "Time from a complete request to its reply.", registry=r
        )
        r.register(_ScrapeTimeGauges(self._gauges))

    def replied(self, request_type: int | None, outcome: Outcome, seconds: float) -> None:
        refusal = outcome.refusal
        if refusal is not None:
            self.refusals.labels(code=refusal.name).inc()
        elif isinstance(outcome.reply, wire.CRLReply):
            self.crls_served.inc()
        elif request_type == wire.MessageType.renew_request:
            self.renewed.inc()
        else:
            self.issued.inc()
        if request_type is not None:
            self.request_seconds.observe(seconds)
        if request_type in (wire.MessageType.enroll_request, wire.MessageType.renew_request):
            self.request_refresh()  # a token spent, a lineage revoked: the gauges follow

    def request_refresh(self) -> None:
        """Refresh the snapshot on the worker; at most one refresh queued at a time."""
        if self._refreshing is not None:
            self._again = True
            return
        self._again = False
        self._refreshing = Deferred.fromCoroutine(self.refresh())

        def done(result: object) -> None:
            self._refreshing = None
            if self._again:
                self.request_refresh()

        self._refreshing.addBoth(done)

    async def refresh(self) -> None:
        if not self.worker.running:
            return
        try:
            self.snapshot = await self.worker.run(_store_snapshot)
        except Exception as exc:  # the database's trouble is /health's to report
            log.warn("cannot read the TTP's store for its metrics: {error}", error=str(exc))

    def _gauges(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "tlsotp_ttp_open_connections", "Connections open now.", value=self.connections.open_connections
        )
        snapshot = self.snapshot
        if snapshot is None:
            return
        yield GaugeMetricFamily(
            "tlsotp_ttp_tokens_outstanding", "Tokens that could still enroll (not spent, withdrawn or expired).",
            value=snapshot.tokens_outstanding,
        )
        yield GaugeMetricFamily(
            "tlsotp_ttp_certificates_revoked", "Certificates revoked, on record (the operator's revocations included).",
            value=snapshot.certificates_revoked,
        )
        yield from _gauge("tlsotp_ttp_crl_number", "The number of the CRL the TTP serves now.", snapshot.crl_number)

    def health(self) -> Deferred[list[str]]:
        return database_problems(self.worker, _check_store_writable)

    def service(self, endpoint: str, program: str) -> MetricsService:
        refresh = PeriodicTask(STORE_REFRESH_SECONDS, self.refresh, clock=self.reactor)
        return MetricsService(
            self.reactor, endpoint, self.registry, HealthResource(self.health, self.reactor), program=program,
            refresh=refresh,
        )
