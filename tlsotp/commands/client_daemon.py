"""``twistd -n tlsotp-client``: the client as a background service.

It performs one client run at start (and, with ``--interval``, again on that period). The OTP
is a secret, so it is never logged: it is written to ``--output`` (mode 0600; default
DATA_DIR/otp.txt) and the log says only that it arrived. Without ``--interval`` the daemon
stops after its run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage

from tlsotp.alerts import AlertError
from tlsotp.commands.client import ClientOptions, describe_session_error, render_answer
from tlsotp.commands.common import describe_error
from tlsotp.commands.option_types import seconds
from tlsotp.commands.party_options import warn_token_on_argv
from tlsotp.commands.pidfile import replace_stale_pidfile
from tlsotp.pki.pem import KEY_MODE, atomic_write
from tlsotp.services.client_run import ClientRunSettings, run_client
from tlsotp.services.shutdown import stop_with_status

log = Logger()


class Options(ClientOptions):
    optParameters: list[list[Any]] = [
        ["output", "o", None, "File the OTP message is written to (mode 0600; default DATA_DIR/otp.txt)."],
        ["interval", None, None, "Repeat the run every this long instead of stopping: 90s, 1h (a bare number is seconds).", seconds],
    ]

    def postOptions(self) -> None:
        replace_stale_pidfile(self)  # before twistd checks it
        super().postOptions()
        if self["trace"]:
            raise usage.UsageError("--trace is for the tlsotp client command; the daemon logs each session")
        self["output"] = Path(self["output"]) if self["output"] else self["data-dir"] / "otp.txt"

    def daemon_settings(self) -> ClientDaemonSettings:
        return ClientDaemonSettings(self.run_settings(), output=self["output"], interval=self["interval"])


@dataclass(frozen=True)
class ClientDaemonSettings:
    """One run's settings, where the answer goes, and the period (None: run once and stop)."""

    run: ClientRunSettings
    output: Path
    interval: float | None = None


class OTPClientService(service.Service):
    """``on_done`` gets the exit status after a one-shot run (the daemon stops the process)."""

    def __init__(
        self, reactor: IReactorTime, settings: ClientDaemonSettings, on_done: Callable[[int], None] | None = None
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.on_done = on_done
        self.loop: LoopingCall | None = None
        self.runs = 0
        self.failures = 0

    def startService(self) -> None:
        service.Service.startService(self)  # type: ignore[no-untyped-call]
        if self.settings.interval is None:
            Deferred.fromCoroutine(self.run_once()).addCallback(self._done)
        else:
            self.loop = LoopingCall(lambda: Deferred.fromCoroutine(self.run_once()))
            self.loop.clock = self.reactor
            self.loop.start(self.settings.interval, now=True)

    def _done(self, good: bool) -> None:
        if self.on_done is not None:
            self.on_done(0 if good else 1)

    async def run_once(self) -> bool:
        """One session; True when the answer was good and written."""
        self.runs += 1
        try:
            run = await run_client(self.reactor, self.settings.run)
        except Exception as exc:
            self.failures += 1
            why = describe_session_error(exc) if isinstance(exc, AlertError) else describe_error(exc)
            log.error("tlsotp-client session failed: {error}", error=why)
            return False
        good, text = render_answer(run.result.answer, self.settings.run.transaction)
        if not good:
            self.failures += 1
            log.error("tlsotp-client: {text}", text=text)
            return False
        atomic_write(self.settings.output, (text + "\n").encode("utf-8"), KEY_MODE)
        log.info(
            "tlsotp-client: answer for {transaction!r} received over {suite}, written to {path}",
            transaction=self.settings.run.transaction, suite=run.result.suite.name, path=str(self.settings.output),
        )
        return True

    def stopService(self) -> None:
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        if self.loop is not None and self.loop.running:
            self.loop.stop()


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    warn_token_on_argv("tlsotp-client", options)
    def on_done(status: int) -> None:
        stop_with_status(reactor, status)

    return cast(service.IService, OTPClientService(reactor, options.daemon_settings(), on_done=on_done))
