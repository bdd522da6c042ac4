"""``twistd -n tlsotp-ttp``: the certificate authority serving enrollment, renewal and its CRL.

Option parsing and service building live here; twistd finds them through the plugin in
``twisted/plugins/tlsotp_plugins.py``. Everything that can be wrong with the data dir (no CA, a
wrong passphrase, a missing database) is found while parsing options, so the operator gets one
line and a non-zero exit rather than a daemon that starts and fails later.

All decisions and database work run on one worker thread: the reactor never waits for SQLite or
for signing, and requests are decided strictly one after another (a single writer).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from tlsotp.commands.option_types import duration, positive_float, positive_int
from tlsotp.services import shutdown
from tlsotp.services.addresses import describe_address
from tlsotp.services.connection_slots import DEFAULT_FIRST_MESSAGE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS
from tlsotp.services.ttp_server import DEFAULT_TIMEOUT, EnrollmentServerFactory
from tlsotp.ttp.ca import CAError, CertificateAuthority, TTPPaths, load_ca, read_passphrase
from tlsotp.ttp.issuer import DEFAULT_CERT_DAYS, DEFAULT_MAX_LINEAGE, Issuer, Outcome
from tlsotp.ttp.store import Store, StoreError

DEFAULT_LISTEN = "tcp:7000:interface=127.0.0.1:backlog=1024"
DEFAULT_CRL_HOURS = 24.0

log = Logger(namespace="tlsotp.ttp")



class Options(usage.Options):
    """Serve certificate enrollment, renewal and the CRL from a TTP data dir."""

    synopsis = "--data-dir DIR [--listen ENDPOINT] [--passphrase-file FILE] [options]"
    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "The TTP's data dir, as made by 'tlsotp ttp init' (required)."],
        ["listen", "l", DEFAULT_LISTEN, "Endpoint string to listen on."],
        ["passphrase-file", None, None, "File whose first line is the CA key's passphrase."],
        ["cert-days", None, DEFAULT_CERT_DAYS, "Lifetime of issued certificates, in days.", positive_int],
        ["timeout", None, DEFAULT_TIMEOUT, "Seconds a requester has to send its complete request, at most.", positive_float],
        ["first-message-timeout", None, DEFAULT_FIRST_MESSAGE_TIMEOUT,
         "Seconds a new connection has to send its complete request (the smaller of this and --timeout applies).",
         positive_float],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS,
         "Connections held at once. When all are taken, the oldest whose request is not complete yet is "
         "closed to make room; only when every one holds a request is a newcomer refused (internal_error).",
         positive_int],
        ["max-per-address", None, DEFAULT_MAX_PER_ADDRESS,
         "Connections held at once from one source address (an IPv6 /64), with the same rule.", positive_int],
        ["crl-hours", None, DEFAULT_CRL_HOURS, "Hours from a CRL's issue to its next update.", positive_float],
        [
            "max-lineage", None, f"{DEFAULT_MAX_LINEAGE.days}d",
            "How long an enrollment may be renewed, from its token's use (90d, 12h, ...); then a new token is needed.",
            duration,
        ],
    ]

    ca: CertificateAuthority

    def postOptions(self) -> None:
        if not self["data-dir"]:
            raise usage.UsageError("--data-dir is required")
        self["data-dir"] = Path(self["data-dir"])
        if isinstance(self["max-lineage"], str):  # the default, which usage.Options does not coerce
            self["max-lineage"] = duration(self["max-lineage"])
        try:
            passphrase_file = self["passphrase-file"]
            passphrase = read_passphrase(Path(passphrase_file) if passphrase_file else None)
            self.ca = load_ca(self["data-dir"], passphrase)
            # Opened only to check it now; the service opens its own after twistd has forked.
            Store.open(TTPPaths(self["data-dir"]).db).close()
        except (CAError, StoreError) as exc:
            refuse_to_start(str(exc))
        # Parse (not yet listen on) the endpoint now, before twistd writes its pidfile.
        from twisted.internet import reactor

        try:
            serverFromString(reactor, self["listen"])  # type: ignore[no-untyped-call]
        except ValueError as exc:
            refuse_to_start(f"bad --listen endpoint {self['listen']!r}: {exc}")


def refuse_to_start(message: str) -> NoReturn:
    shutdown.refuse_to_start("tlsotp-ttp", message)


class TTPService(service.Service):
    """Listens on ``listen`` and answers each request through the Issuer on one worker thread."""

    def __init__(
        self,
        reactor: Any,
        ca: CertificateAuthority,
        data_dir: Path,
        *,
        listen: str = DEFAULT_LISTEN,
        cert_days: int = DEFAULT_CERT_DAYS,
        timeout: float = DEFAULT_TIMEOUT,
        crl_validity: datetime.timedelta = datetime.timedelta(hours=DEFAULT_CRL_HOURS),
        max_lineage: datetime.timedelta = DEFAULT_MAX_LINEAGE,
        first_message_timeout: float | None = DEFAULT_FIRST_MESSAGE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
    ) -> None:
        self.reactor = reactor
        self.ca = ca
        self.data_dir = data_dir
        self.listen = listen
        self.cert_days = cert_days
        self.timeout = timeout
        self.crl_validity = crl_validity
        self.max_lineage = max_lineage
        self.port: Any = None  # an IListeningPort once listening
        self._pool: ThreadPool | None = None
        self._store: Store | None = None
        self._issuer: Issuer | None = None
        self.factory = EnrollmentServerFactory(
            self._decide, timeout=timeout, first_message_timeout=first_message_timeout,
            max_connections=max_connections, max_per_address=max_per_address,
        )

    def privilegedStartService(self) -> None:
        # Listen before twistd drops privileges, and fail at once (not later, in a log) if we can't.
        service.Service.privilegedStartService(self)  # type: ignore[no-untyped-call]
        try:
            listening = serverFromString(self.reactor, self.listen).listen(self.factory)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            refuse_to_start(f"bad --listen endpoint {self.listen!r}: {exc}")
        failures: list[str] = []
        starting = True

        def failed(failure: Failure) -> None:
            if starting:
                failures.append(failure.getErrorMessage())
            else:  # an endpoint that fails later: one line in the log, and stop
                log.critical("tlsotp-ttp: cannot listen on {listen}: {why}", listen=self.listen, why=failure.getErrorMessage())
                self.reactor.stop()

        listening.addCallbacks(self._listening, failed)
        starting = False
        if failures:  # TCP and UNIX endpoints fail at once: refuse to start
            refuse_to_start(f"cannot listen on {self.listen}: {failures[0]}")

    def _listening(self, port: Any) -> None:
        self.port = port
        where = describe_address(port.getHost())
        log.info("tlsotp-ttp serving on {where}, root {fingerprint}", where=where, fingerprint=self.ca.fingerprint)

    def startService(self) -> None:
        if self.port is None and not self.running:
            self.privilegedStartService()
        service.Service.startService(self)  # type: ignore[no-untyped-call]
        try:
            self._store = Store.open(TTPPaths(self.data_dir).db)  # checked again: intact and writable
        except StoreError as exc:
            refuse_to_start(str(exc))
        self._issuer = Issuer(
            self.ca, self._store, cert_days=self.cert_days, crl_validity=self.crl_validity, max_lineage=self.max_lineage
        )
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="tlsotp-ttp-issuer")
        self._pool.start()

    def _decide(self, payload: bytes) -> Deferred[Outcome]:
        if self._pool is None or self._issuer is None:
            raise RuntimeError("the TTP service is not running")
        return deferToThreadPool(self.reactor, self._pool, self._issuer.handle, payload)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        stopping: Deferred[None] = succeed(None)
        if self.port is not None:
            stopping = cast("Deferred[None]", self.port.stopListening() or succeed(None))
            self.port = None

        def release(_: object) -> None:
            if self._pool is not None:
                self._pool.stop()  # waits for a decision under way, which commits before replying
                self._pool = None
            if self._store is not None:
                self._store.close()
                self._store = None

        return stopping.addCallback(release)


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return cast(
        service.IService,
        TTPService(
            reactor,
            options.ca,
            options["data-dir"],
            listen=options["listen"],
            cert_days=options["cert-days"],
            timeout=options["timeout"],
            crl_validity=datetime.timedelta(hours=options["crl-hours"]),
            max_lineage=options["max-lineage"],
            first_message_timeout=options["first-message-timeout"],
            max_connections=options["max-connections"],
            max_per_address=options["max-per-address"],
        ),
    )


if __name__ == "__main__":  # pragma: no cover - twistd is the way in
    sys.exit("run this with: twistd -n tlsotp-ttp --data-dir DIR")
