"""``twistd -n tlsotp-server``: the bank server daemon's command line.

The options become a ``BankServerSettings`` and ``makeService`` is
``tlsotp.services.bank_service.build_service``: on start the service loads its credentials (or
enrolls with the token of ``--token-file``), fetches the TTP's CRL, and listens, all inside
``startService`` (``blocking_start``), so that a daemonized twistd's launcher returns only once
it listens, or exits 1; while running it refreshes the CRL and renews its certificate before
expiry. ``--database`` keeps the OTPs in PostgreSQL, shared by several servers
(docs/postgresql.rst). SIGTERM stops accepting at once and lets sessions in flight finish
(``--drain-timeout``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, cast

from twisted.application import service
from twisted.python import usage

from tlsotp.commands import bank_worker
from tlsotp.commands.metrics_option import METRICS_OPTION, check_metrics_option
from tlsotp.commands.option_types import positive_int, same_named, seconds, whole_seconds
from tlsotp.commands.party_options import PartyOptions, warn_token_on_argv
from tlsotp.commands.pidfile import replace_stale_pidfile
from tlsotp.database_checks import DatabaseUnusable, check_database
from tlsotp.database_url import DatabaseURLError, parse_database_url
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.pem import PEMError
from tlsotp.services import readiness
from tlsotp.services.addresses import describe_address
from tlsotp.services.bank_service import (
    CRL_FILE,
    DEFAULT_LISTEN,
    DEFAULT_OTP_RETENTION,
    DEFAULT_TTP_UNREACHABLE_AFTER,
    BankServerService,
    BankServerSettings,
    build_service,
)
from tlsotp.services.connection_slots import DEFAULT_FIRST_MESSAGE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS
from tlsotp.services.credentials import StartupError, check_can_enroll
from tlsotp.services.daemon_services import DEFAULT_DRAIN_TIMEOUT
from tlsotp.services.enrollment import load_credentials
from tlsotp.services.listen import listen_endpoint
from tlsotp.services.otp_authority import DATABASE_FILE, OTPPolicy
from tlsotp.services.shutdown import keep_launcher_stderr, refuse_to_start, stop_with_status
from tlsotp.services.workers import WorkerSupervisor

__all__ = ["CRL_FILE", "BankServerService", "Options", "makeService", "settings_from"]


class Options(PartyOptions):
    synopsis = "--data-dir DIR --name NAME [--listen ENDPOINT] [--ttp ENDPOINT] (--ca-fingerprint F | --ca-cert FILE) [--token-file F] ..."
    optParameters: list[list[Any]] = [
        ["listen", "l", DEFAULT_LISTEN, "Endpoint string to listen on."],
        ["name", "n", None, "The server's DNS name, as minted in its token (e.g. bank.example)."],
        ["otp-digits", None, 6, "Digits in each OTP (4 to 12).", int],
        ["otp-ttl", None, 300, "How long an OTP stays valid: 90s, 5m, 1h (a bare number is seconds).", whole_seconds],
        ["max-attempts", None, 3, "Wrong confirmations before a transaction locks.", int],
        ["crl-refresh", None, 300.0, "Time between CRL refreshes from the TTP: 5m, 1h (a bare number is seconds).", seconds],
        ["renew-check", None, 3600.0, "Time between checks whether the certificate needs renewing: 1h (a bare number is seconds).",
         seconds],
        ["renew-before", None, 2 * 86400.0, "Renew when the certificate expires within this long: 2d, 12h (a bare number is seconds).",
         seconds],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS,
         "Connections held at once. When all are taken, the oldest that has not yet sent its ClientHello "
         "is closed to make room; only when every one has spoken is a newcomer refused (internal_error).",
         positive_int],
        ["max-per-address", None, DEFAULT_MAX_PER_ADDRESS,
         "Connections held at once from one source address (an IPv6 /64), with the same rule.", positive_int],
        ["first-message-timeout", None, DEFAULT_FIRST_MESSAGE_TIMEOUT,
         "Time a new connection has to send its complete ClientHello (--timeout bounds the rest): 10s "
         "(a bare number is seconds).", seconds],
        ["drain-timeout", None, DEFAULT_DRAIN_TIMEOUT,
         "On SIGTERM: stop accepting at once, then give sessions in flight this long to finish "
         "before closing them: 30s, 2m (a bare number is seconds).", seconds],
        METRICS_OPTION,
        ["ttp-unreachable-after", None, DEFAULT_TTP_UNREACHABLE_AFTER,
         "With --metrics: /health reports 503 once CRL refreshes and renewals have been failing for this long: "
         "30m, 2h (a bare number is seconds).", seconds],
        ["database", None, None,
         "Keep the OTPs in this PostgreSQL database, shared by every server given it: "
         "postgresql://USER@HOST:PORT/DBNAME (no password in it). Default: SQLite in the data dir. "
         "See docs/postgresql.rst."],
        ["database-password-file", None, None,
         "With --database: read the database password from this file (else libpq's PGPASSFILE or ~/.pgpass).",
         Path],
        ["otp-pepper-file", None, None,
         "With --database: the OTP pepper (32 bytes, mode 0600; default DATA_DIR/otp-pepper.bin). "
         "Every server of one database needs a copy of the same file.", Path],
        ["workers", None, 1,
         "Worker processes serving sessions on the one listening socket (1: this process serves them). "
         "With more, this process only enrolls, refreshes the CRL, renews, prunes, serves --metrics for all "
         "and restarts workers; --max-connections and --max-per-address are then per worker.", positive_int],
        ["otp-retention", None, DEFAULT_OTP_RETENTION,
         "How long an OTP's record is kept past its expiry before a background prune deletes it "
         "(records the lockout rule still reads are kept): 1d, 12h (a bare number is seconds).", seconds],
    ]

    optFlags: list[list[Any]] = [
        ["log-transactions", None,
         "Also log each transaction's text when its OTP is issued or confirmed (personal data: off by default; "
         "the code is never logged)."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["allow-client"] = []

    def opt_allow_client(self, name: str) -> None:
        """Accept only this client name (repeatable; default: any client the TTP certified)."""
        self["allow-client"].append(name)

    def postOptions(self) -> None:
        replace_stale_pidfile(self)  # before twistd checks it
        super().postOptions()
        if not self["name"]:
            raise usage.UsageError("--name is required: the DNS name the server's certificate is for")
        check_metrics_option("tlsotp-server", self["metrics"])
        try:
            self["name"] = check_dns_name(self["name"])
            self["allow-client"] = [check_dns_name(name) for name in self["allow-client"]]
            self["otp-policy"] = OTPPolicy(self["otp-digits"], self["otp-ttl"], self["max-attempts"])
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None
        if self["database"] is None:
            for option in ("database-password-file", "otp-pepper-file"):
                if self[option] is not None:
                    raise usage.UsageError(f"--{option} goes with --database")
        # What can be known before the reactor runs is refused now, in one line, exit 1.
        try:
            if self["database"] is not None:
                self["database"] = parse_database_url(self["database"], self["database-password-file"])
                if importlib.util.find_spec("psycopg") is None:
                    raise DatabaseURLError("--database needs psycopg: pip install 'tlsotp[postgresql]'")
            if load_credentials(self["data-dir"]) is None:
                check_can_enroll(self["data-dir"], token=self["token"], pin=self["pin"], name=self["name"])
            if self["data-dir"].is_dir() and self["database"] is None:  # else made when enrolling; checked again
                check_database(self["data-dir"] / DATABASE_FILE)
        except (PEMError, StartupError, DatabaseUnusable, DatabaseURLError) as exc:
            refuse_to_start("tlsotp-server", str(exc))
        # Parse (not yet listen on) the endpoint now, before twistd writes its pidfile.
        from twisted.internet import reactor

        try:
            listen_endpoint(reactor, self["listen"])
        except ValueError as exc:
            refuse_to_start("tlsotp-server", f"bad --listen endpoint {self['listen']!r}: {exc}")


def settings_from(options: Options) -> BankServerSettings:
    """The parsed command line as the service's settings."""
    return BankServerSettings(
        suites=options.suites,
        otp_policy=options["otp-policy"],
        allowed_clients=options["allow-client"] or None,
        log_transactions=bool(options["log-transactions"]),
        database=options["database"],
        otp_pepper_file=options["otp-pepper-file"],
        **same_named(
            options, "data_dir", "name", "ttp", "pin", "token", "listen", "key_type", "timeout", "crl_refresh",
            "renew_check", "renew_before", "max_connections", "max_per_address", "first_message_timeout",
            "drain_timeout", "metrics", "ttp_unreachable_after", "workers", "otp_retention",
        ),
    )


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    warn_token_on_argv("tlsotp-server", options)
    keep_launcher_stderr()  # before twistd daemonizes: see tlsotp.services.shutdown
    settings = settings_from(options)

    def on_fatal() -> None:
        stop_with_status(reactor, 1)

    server: BankServerService
    if settings.workers > 1:
        # The supervisor's start waits for its workers, which needs the reactor: not blocking.
        server = WorkerSupervisor(settings, reactor, on_fatal=on_fatal, worker_command=bank_worker.COMMAND)
    else:
        # Blocking start-up: twistd's launcher returns only once the server listens, or with exit 1.
        server = build_service(settings, reactor, on_fatal=on_fatal, blocking_start=True)
    # systemd's Type=notify: ready once enrolled, the CRL in hand and listening, and the reactor
    # runs (SIGTERM handled); a start-up failure's reason is sent by tlsotp.services.shutdown.
    def ready(result: None) -> None:
        where = "the inherited socket" if server.port is None else describe_address(cast(Any, server.port).getHost())
        reactor.callWhenRunning(readiness.notify_ready, f"listening on {where}")
        return result

    server.ready.addCallback(ready)
    reactor.addSystemEventTrigger("before", "shutdown", readiness.notify_stopping)
    return cast(service.IService, server)
