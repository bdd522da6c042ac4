"""``twistd -n tlsotp-server``: the bank server daemon's command line.

The options become a ``BankServerSettings`` and ``makeService`` is
``tlsotp.services.bank_service.build_service``: on start the service loads its credentials (or
enrolls with ``--token``), fetches the TTP's CRL, and listens; while running it refreshes the
CRL and renews its certificate before expiry. SIGTERM stops accepting at once and lets sessions
in flight finish (``--drain-timeout``).
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from tlsotp.commands.option_types import positive_int, same_named, seconds, whole_seconds
from tlsotp.commands.party_options import PartyOptions
from tlsotp.database_checks import DatabaseUnusable, check_database
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.pem import PEMError
from tlsotp.services.bank_service import (
    CRL_FILE,
    DEFAULT_LISTEN,
    DEFAULT_OTP_RETENTION,
    BankServerService,
    BankServerSettings,
    build_service,
)
from tlsotp.services.connection_slots import DEFAULT_FIRST_MESSAGE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS
from tlsotp.services.credentials import StartupError, check_can_enroll
from tlsotp.services.daemon_services import DEFAULT_DRAIN_TIMEOUT
from tlsotp.services.enrollment import load_credentials
from tlsotp.services.otp_authority import DATABASE_FILE, OTPPolicy
from tlsotp.services.shutdown import refuse_to_start, stop_with_status

__all__ = ["CRL_FILE", "BankServerService", "Options", "makeService", "settings_from"]


class Options(PartyOptions):
    synopsis = "--data-dir DIR --name NAME [--listen ENDPOINT] [--ttp ENDPOINT] (--ca-fingerprint F | --ca-cert FILE) [--token T] ..."
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
        ["otp-retention", None, DEFAULT_OTP_RETENTION,
         "How long an OTP's record is kept past its expiry before a background prune deletes it "
         "(records the lockout rule still reads are kept): 1d, 12h (a bare number is seconds).", seconds],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["allow-client"] = []

    def opt_allow_client(self, name: str) -> None:
        """Accept only this client name (repeatable; default: any client the TTP certified)."""
        self["allow-client"].append(name)

    def postOptions(self) -> None:
        super().postOptions()
        if not self["name"]:
            raise usage.UsageError("--name is required: the DNS name the server's certificate is for")
        try:
            self["name"] = check_dns_name(self["name"])
            self["allow-client"] = [check_dns_name(name) for name in self["allow-client"]]
            self["otp-policy"] = OTPPolicy(self["otp-digits"], self["otp-ttl"], self["max-attempts"])
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None
        # What can be known before the reactor runs is refused now, in one line, exit 1.
        try:
            if load_credentials(self["data-dir"]) is None:
                check_can_enroll(self["data-dir"], token=self["token"], pin=self["pin"], name=self["name"])
            if self["data-dir"].is_dir():  # else made when enrolling; checked again before listening
                check_database(self["data-dir"] / DATABASE_FILE)
        except (PEMError, StartupError, DatabaseUnusable) as exc:
            refuse_to_start("tlsotp-server", str(exc))
        # Parse (not yet listen on) the endpoint now, before twistd writes its pidfile.
        from twisted.internet import reactor

        try:
            serverFromString(reactor, self["listen"])  # type: ignore[no-untyped-call]
        except ValueError as exc:
            refuse_to_start("tlsotp-server", f"bad --listen endpoint {self['listen']!r}: {exc}")


def settings_from(options: Options) -> BankServerSettings:
    """The parsed command line as the service's settings."""
    return BankServerSettings(
        suites=options.suites,
        otp_policy=options["otp-policy"],
        allowed_clients=options["allow-client"] or None,
        **same_named(
            options, "data_dir", "name", "ttp", "pin", "token", "listen", "key_type", "timeout", "crl_refresh",
            "renew_check", "renew_before", "max_connections", "max_per_address", "first_message_timeout",
            "drain_timeout", "otp_retention",
        ),
    )


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return cast(
        service.IService,
        build_service(settings_from(options), reactor, on_fatal=lambda: stop_with_status(reactor, 1)),
    )
