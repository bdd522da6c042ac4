"""``twistd -n tlsotp-server``: the bank server daemon.

On start it loads its credentials (or enrolls with ``--token``), fetches the TTP's CRL, and
listens. While running it refreshes the CRL on a schedule and renews its certificate before
expiry, swapping both into the factory so new sessions use them without a restart.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Callable, Coroutine, cast

from cryptography import x509
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage

from tlsotp.alerts import AlertError
from tlsotp.commands.common import describe_error
from tlsotp.commands.option_types import positive_float, positive_int
from tlsotp.commands.party_options import PartyOptions
from tlsotp.database_checks import DatabaseUnusable, check_database
from tlsotp.handshake import suites_for_key
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.pem import PEMError, load_crl
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import utcnow, verify_crl
from tlsotp.services.addresses import describe_address
from tlsotp.services.bank_server import OTPServerFactory, ServerIdentity
from tlsotp.services.connection_slots import DEFAULT_FIRST_MESSAGE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS
from tlsotp.services.credentials import StartupError, check_can_enroll, obtain_credentials
from tlsotp.services.enrollment import Credentials, fetch_crl, load_credentials, renew
from tlsotp.services.otp_authority import DATABASE_FILE, OTPAuthority, OTPPolicy
from tlsotp.services.shutdown import refuse_to_start, stop_with_status

log = Logger()

CRL_FILE = "crl.pem"


class Options(PartyOptions):
    synopsis = "--data-dir DIR --name NAME [--listen ENDPOINT] [--ttp ENDPOINT] (--ca-fingerprint F | --ca-cert FILE) [--token T] ..."
    optParameters: list[list[Any]] = [
        ["listen", "l", "tcp:7001:interface=127.0.0.1:backlog=1024", "Endpoint string to listen on."],
        ["name", "n", None, "The server's DNS name, as minted in its token (e.g. bank.example)."],
        ["otp-digits", None, 6, "Digits in each OTP (4 to 12).", int],
        ["otp-ttl", None, 300, "Seconds an OTP stays valid.", int],
        ["max-attempts", None, 3, "Wrong confirmations before a transaction locks.", int],
        ["crl-refresh", None, 300.0, "Seconds between CRL refreshes from the TTP.", positive_float],
        ["renew-check", None, 3600.0, "Seconds between checks whether the certificate needs renewing.", positive_float],
        ["renew-before", None, 2 * 86400.0, "Renew when the certificate expires within this many seconds.", positive_float],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS,
         "Connections held at once. When all are taken, the oldest that has not yet sent its ClientHello "
         "is closed to make room; only when every one has spoken is a newcomer refused (internal_error).",
         positive_int],
        ["max-per-address", None, DEFAULT_MAX_PER_ADDRESS,
         "Connections held at once from one source address (an IPv6 /64), with the same rule.", positive_int],
        ["first-message-timeout", None, DEFAULT_FIRST_MESSAGE_TIMEOUT,
         "Seconds a new connection has to send its complete ClientHello (--timeout bounds the rest).",
         positive_float],
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


class OTPServerService(service.Service):
    """``on_fatal`` runs when start-up fails (the daemon stops the process with status 1)."""

    def __init__(self, reactor: Any, options: Options, on_fatal: Callable[[], None] | None = None) -> None:
        self.reactor = reactor
        self.options = options
        self.on_fatal = on_fatal
        self.data_dir: Path = options["data-dir"]
        self.factory: OTPServerFactory | None = None
        self.port: IListeningPort | None = None
        self.authority: OTPAuthority | None = None
        self.ready: Deferred[None] = Deferred()
        self._loops: list[LoopingCall] = []
        self._in_flight: set[Deferred[None]] = set()

    def startService(self) -> None:
        service.Service.startService(self)  # type: ignore[no-untyped-call]
        d = Deferred.fromCoroutine(self._start())
        d.addCallbacks(self.ready.callback, self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        log.critical("tlsotp-server cannot start: {error}", error=describe_error(failure.value))
        self.ready.errback(failure)
        if self.on_fatal is not None:
            self.on_fatal()

    async def _start(self) -> None:
        o = self.options
        credentials = await obtain_credentials(
            self.reactor, data_dir=self.data_dir, ttp=o["ttp"], pin=o["pin"], token=o["token"],
            name=o["name"], role=Role.SERVER, key_type=o["key-type"], timeout=o["timeout"],
        )
        usable = suites_for_key(credentials.chain[0].public_key(), o.suites)
        if not usable:
            raise StartupError(
                f"none of the configured suites can be authenticated by this {credentials.chain[0].public_key().__class__.__name__}"
            )
        # The OTP database is opened and checked now, not on the first client's request.
        self.authority = OTPAuthority(self.reactor, self.data_dir, o["otp-policy"])
        await self.authority.open()
        crl = await self._initial_crl(credentials)
        self.factory = OTPServerFactory(
            ServerIdentity(credentials.key, credentials.chain, credentials.root),
            self.authority,
            suites=usable,
            allowed_clients=o["allow-client"] or None,
            crl=crl,
            timeout_seconds=o["timeout"],
            first_message_timeout=o["first-message-timeout"],
            max_connections=o["max-connections"],
            max_per_address=o["max-per-address"],
        )
        self.port = await serverFromString(self.reactor, o["listen"]).listen(self.factory)  # type: ignore[no-untyped-call]
        log.info(
            "tlsotp-server {name} listening on {where}, suites: {suites}",
            name=o["name"], where=describe_address(cast(Any, self.port).getHost()),
            suites=", ".join(s.name for s in usable),
        )
        for task, interval in ((self.refresh_crl, o["crl-refresh"]), (self.renew_if_due, o["renew-check"])):
            loop = LoopingCall(self._tracked, task)
            loop.clock = self.reactor
            loop.start(interval, now=False)
            self._loops.append(loop)

    def _tracked(self, task: Callable[[], Coroutine[Any, Any, None]]) -> Deferred[None]:
        """Run a periodic task, remembering it until done so that stopping can wait for it."""
        running = Deferred.fromCoroutine(task())
        self._in_flight.add(running)

        def done(result: object) -> object:
            self._in_flight.discard(running)
            return result

        running.addBoth(done)
        return running

    async def _initial_crl(self, credentials: Credentials) -> x509.CertificateRevocationList:
        try:
            return await fetch_crl(
                self.reactor, self.options["ttp"], pin=credentials.root, data_dir=self.data_dir,
                timeout=self.options["timeout"],
            )
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
                self.reactor, self.options["ttp"], pin=self.factory.identity.root, data_dir=self.data_dir,
                timeout=self.options["timeout"],
            )
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
        if remaining > datetime.timedelta(seconds=self.options["renew-before"]):
            return
        try:
            # A new key (of the same type) at each renewal: then a copy of an old key can neither
            # renew unnoticed (the TTP's reuse detection) nor outlive the next renewal.
            credentials = await renew(
                self.reactor, self.options["ttp"], data_dir=self.data_dir, new_key=True, timeout=self.options["timeout"]
            )
        except Exception as exc:
            log.warn("certificate renewal failed, will retry: {error}", error=str(exc))
            return
        self.factory.identity = ServerIdentity(credentials.key, credentials.chain, credentials.root)
        log.info(
            "certificate renewed: serial {serial:x}, valid until {until}",
            serial=credentials.chain[0].serial_number, until=credentials.chain[0].not_valid_after_utc,
        )

    async def _stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        # A renewal or CRL fetch under way finishes (each is bounded by --timeout) before we go.
        await DeferredList(list(self._in_flight))
        if self.port is not None:
            await cast(Any, self.port).stopListening()
        if self.authority is not None:
            self.authority.close()

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return cast(service.IService, OTPServerService(reactor, options, on_fatal=lambda: stop_with_status(reactor, 1)))
