"""``twistd -n tlsotp-ttp``: the certificate authority serving enrollment, renewal and its CRL.

Option parsing lives here: the options become a ``TTPSettings`` and ``makeService`` is
``tlsotp.services.ttp_service.build_service`` (twistd finds them through the plugin in
``twisted/plugins/tlsotp_plugins.py``). Everything that can be wrong with the data dir (no CA, a
wrong passphrase, a missing database) is found while parsing options, so the operator gets one
line and a non-zero exit rather than a daemon that starts and fails later.

All decisions and database work run on one worker thread: the reactor never waits for SQLite or
for signing, and requests are decided strictly one after another (a single writer). SIGTERM
stops accepting at once and lets requests in flight finish (``--drain-timeout``).

``--database postgresql://...`` puts the store in a PostgreSQL database that several TTP
processes may share (docs/postgresql_ttp.rst); the CA key and root stay in the data dir.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

from twisted.application import service
from twisted.internet.interfaces import IListeningPort
from twisted.python import usage

from tlsotp.commands.metrics_option import METRICS_OPTION, check_metrics_option
from tlsotp.commands.option_types import duration, hours, positive_int, same_named, seconds, whole_days
from tlsotp.commands.pidfile import replace_stale_pidfile
from tlsotp.database_url import DatabaseURLError, parse_database_url
from tlsotp.services import readiness, shutdown
from tlsotp.services.addresses import describe_address
from tlsotp.services.connection_slots import DEFAULT_FIRST_MESSAGE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS
from tlsotp.services.daemon_services import DEFAULT_DRAIN_TIMEOUT
from tlsotp.services.listen import listen_endpoint
from tlsotp.services.ttp_server import DEFAULT_TIMEOUT
from tlsotp.services.ttp_service import DEFAULT_CRL_HOURS, DEFAULT_LISTEN, DEFAULT_TOKEN_RETENTION, TTPService, TTPSettings, build_service
from tlsotp.ttp.ca import CAError, CertificateAuthority, TTPPaths, load_ca, read_passphrase
from tlsotp.ttp.issuer import DEFAULT_CERT_DAYS, DEFAULT_MAX_LINEAGE
from tlsotp.ttp.postgres_store import PostgresStore
from tlsotp.ttp.store import Store, StoreError

__all__ = ["Options", "TTPService", "makeService", "settings_from"]


class Options(usage.Options):
    """Serve certificate enrollment, renewal and the CRL from a TTP data dir."""

    synopsis = "--data-dir DIR [--listen ENDPOINT] [--passphrase-file FILE] [options]"
    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "The TTP's data dir, as made by 'tlsotp ttp init' (required)."],
        ["listen", "l", DEFAULT_LISTEN, "Endpoint string to listen on."],
        ["passphrase-file", None, None, "File whose first line is the CA key's passphrase."],
        ["cert-days", None, DEFAULT_CERT_DAYS, "Lifetime of issued certificates: 7d, 168h (a bare number is days; whole days).",
         whole_days],
        ["timeout", None, DEFAULT_TIMEOUT, "Time a requester has to send its complete request, at most: 30s (a bare number is seconds).",
         seconds],
        ["first-message-timeout", None, DEFAULT_FIRST_MESSAGE_TIMEOUT,
         "Time a new connection has to send its complete request (the smaller of this and --timeout "
         "applies): 10s (a bare number is seconds).", seconds],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS,
         "Connections held at once. When all are taken, the oldest whose request is not complete yet is "
         "closed to make room; only when every one holds a request is a newcomer refused (internal_error).",
         positive_int],
        ["max-per-address", None, DEFAULT_MAX_PER_ADDRESS,
         "Connections held at once from one source address (an IPv6 /64), with the same rule.", positive_int],
        ["crl-hours", None, DEFAULT_CRL_HOURS, "Time from a CRL's issue to its next update: 24h, 1d, 90m (a bare number is hours).", hours],
        [
            "max-lineage", None, f"{DEFAULT_MAX_LINEAGE.days}d",
            "How long an enrollment may be renewed, from its token's use (90d, 12h, ...); then a new token is needed.",
            duration,
        ],
        [
            "token-retention", None, f"{DEFAULT_TOKEN_RETENTION.days}d",
            "How long tokens are kept once expired, withdrawn or spent (30d, 12h, ...); then an hourly prune "
            "deletes the unspent ones and erases the spent ones' MAC keys. Certificates are kept for ever.",
            duration,
        ],
        ["database", None, None,
         "Keep the store in this PostgreSQL database (postgresql://user@host:port/dbname, no password in it), "
         "shared by every TTP on it, instead of the data dir's SQLite file; the CA key stays in the data dir."],
        ["database-password-file", None, None,
         "File holding the --database password (else libpq's PGPASSFILE or ~/.pgpass)."],
        ["drain-timeout", None, DEFAULT_DRAIN_TIMEOUT,
         "On SIGTERM: stop accepting at once, then give requests in flight this long to finish "
         "before closing them: 30s, 2m (a bare number is seconds).", seconds],
        METRICS_OPTION,
    ]

    ca: CertificateAuthority

    def postOptions(self) -> None:
        replace_stale_pidfile(self)  # before twistd checks it
        if not self["data-dir"]:
            raise usage.UsageError("--data-dir is required")
        check_metrics_option("tlsotp-ttp", self["metrics"])
        self["data-dir"] = Path(self["data-dir"])
        for name in ("max-lineage", "token-retention"):
            if isinstance(self[name], str):  # the default, which usage.Options does not coerce
                self[name] = duration(self[name])
        try:
            passphrase_file = self["passphrase-file"]
            passphrase = read_passphrase(Path(passphrase_file) if passphrase_file else None)
            self.ca = load_ca(self["data-dir"], passphrase)
            # Opened only to check it now; the service opens its own after twistd has forked.
            if self["database"] is None:
                if self["database-password-file"] is not None:
                    raise DatabaseURLError("--database-password-file needs --database")
                Store.open(TTPPaths(self["data-dir"]).db).close()
            else:
                password_file = self["database-password-file"]
                self["database"] = parse_database_url(self["database"], Path(password_file) if password_file else None)
                PostgresStore.open_database(self["database"], self.ca.fingerprint).close()
        except (CAError, StoreError, DatabaseURLError) as exc:
            refuse_to_start(str(exc))
        # Parse (not yet listen on) the endpoint now, before twistd writes its pidfile.
        from twisted.internet import reactor

        try:
            listen_endpoint(reactor, self["listen"])
        except ValueError as exc:
            refuse_to_start(f"bad --listen endpoint {self['listen']!r}: {exc}")


def refuse_to_start(message: str) -> NoReturn:
    shutdown.refuse_to_start("tlsotp-ttp", message)


def settings_from(options: Options) -> TTPSettings:
    """The parsed command line as the service's settings."""
    return TTPSettings(
        ca=options.ca,
        crl_validity=datetime.timedelta(hours=options["crl-hours"]),
        **same_named(
            options, "data_dir", "listen", "cert_days", "timeout", "max_lineage", "first_message_timeout",
            "max_connections", "max_per_address", "drain_timeout", "metrics", "token_retention", "database",
        ),
    )


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    shutdown.keep_launcher_stderr()  # before twistd daemonizes: see tlsotp.services.shutdown
    ttp = build_service(settings_from(options), reactor, on_fatal=lambda: shutdown.stop_with_status(reactor, 1))
    # systemd's Type=notify: ready once listening and the reactor runs. The TTP listens before
    # twistd drops privileges, before the store is opened and SIGTERM handled: READY=1 then would
    # come too early. A start-up failure's reason is sent by tlsotp.services.shutdown.
    def listening(port: IListeningPort) -> IListeningPort:
        where = describe_address(cast(Any, port).getHost())
        reactor.callWhenRunning(readiness.notify_ready, f"listening on {where}")
        return port  # on to the service's own callbacks

    ttp.listener.listening.addCallback(listening)
    reactor.addSystemEventTrigger("before", "shutdown", readiness.notify_stopping)
    return cast(service.IService, ttp)


if __name__ == "__main__":  # pragma: no cover - twistd is the way in
    sys.exit("run this with: twistd -n tlsotp-ttp --data-dir DIR")
