"""``tlsotp client``: one session with the server, the answer on stdout, an exit code.

Its options (shared with ``twistd -n tlsotp-client``) only turn argv into a
``ClientRunSettings``; ``tlsotp.services.client_run.run_client`` does the work.

Exit codes: 0 the OTP was received and verified (or a confirmation accepted); 1 any refusal or
failure (one line on stderr, saying whether the server could not be reached, refused us, was
refused by us, or hung up); 2 a usage error. With ``--json`` stdout gets one JSON document
(``run_json``: the answer, the suite, the costs; or, on a failure, the error document of
``tlsotp.commands.common``, with the way it failed and the alert).
"""

from __future__ import annotations

import datetime
import sys
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.python import usage

from tlsotp.alerts import AlertError, LocalRefusal, PeerRefused, PeerUnreachable, SessionTruncated
from tlsotp.commands.common import EXIT_OK, AnsweredFailure, Command, CommandFailed, write_json
from tlsotp.commands.party_options import PartyOptions
from tlsotp.commands.trace import TracePrinter, summarise
from tlsotp.otp import messages
from tlsotp.otp.messages import check_code, check_transaction
from tlsotp.pki.names import check_dns_name
from tlsotp.services.client_run import DEFAULT_SERVER, DEFAULT_TRANSACTION, ClientRun, ClientRunSettings, run_client

__all__ = ["DEFAULT_TRANSACTION", "ClientCommandOptions", "ClientOptions", "describe_session_error", "render_answer"]


class ClientOptions(PartyOptions):
    """The client's options, shared by ``tlsotp client`` and ``twistd -n tlsotp-client``."""

    synopsis = "--data-dir DIR --server-name NAME [--server ENDPOINT] [--name NAME --token-file F (--ca-fingerprint F | --ca-cert FILE)]"
    optFlags: list[list[Any]] = [
        ["no-crl-check", None, "Do not fetch the TTP's CRL before connecting (revoked servers go unnoticed!)."],
        ["trace", None, "Print each handshake message as it goes, and what the session cost."],
    ]
    optParameters: list[list[Any]] = [
        ["name", "n", None, "This client's DNS-style name, as minted in its token (needed to enroll)."],
        ["server", "s", DEFAULT_SERVER, "Endpoint string of the server."],
        ["server-name", None, None, "The name the server's certificate must carry (e.g. bank.example)."],
        ["transaction", None, DEFAULT_TRANSACTION, "The transaction the OTP authorises."],
        ["confirm", None, None, "Confirm this OTP for the transaction instead of requesting one."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if not self["server-name"]:
            raise usage.UsageError("--server-name is required: the name the server must prove")
        try:
            self["server-name"] = check_dns_name(self["server-name"])
            if self["name"] is not None:
                self["name"] = check_dns_name(self["name"])
            check_transaction(self["transaction"])
            if self["confirm"] is not None:
                check_code(self["confirm"])
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None

    def run_settings(self, trace_out: TextIO | None = None) -> ClientRunSettings:
        """The settings these options describe; with ``--trace``, the trace goes to ``trace_out``."""
        return ClientRunSettings(
            data_dir=self["data-dir"],
            server_name=self["server-name"],
            server=self["server"],
            ttp=self["ttp"],
            pin=self["pin"],
            token=self["token"],
            name=self["name"],
            key_type=self["key-type"],
            suites=self.suites,
            timeout_seconds=self["timeout"],
            check_crl=not self["no-crl-check"],
            transaction=self["transaction"],
            confirm=self["confirm"],
            observer=TracePrinter(trace_out or sys.stdout) if self["trace"] else None,
        )


def render_answer(answer: messages.OTPGrant | messages.ConfirmResult, transaction: str) -> tuple[bool, str]:
    """What the user reads, and whether it is good news."""
    if isinstance(answer, messages.OTPGrant):
        expires = datetime.datetime.fromtimestamp(answer.expires_at, datetime.timezone.utc)
        return True, f"{answer.message}\n(valid until {expires:%Y-%m-%d %H:%M:%S} UTC, for one use)"
    if answer.status is messages.ConfirmStatus.accepted:
        return True, f"OTP accepted for {transaction}."
    detail = answer.status.name.replace("_", " ")
    if answer.status is messages.ConfirmStatus.wrong_code:
        detail += f" ({answer.attempts_left} attempts left)"
    return False, f"OTP refused for {transaction}: {detail}"


def run_json(run: ClientRun, transaction: str, good: bool) -> dict[str, Any]:
    """``tlsotp client --json``: the answer, the suite, and what the session cost on the wire."""
    answer = run.result.answer
    document: dict[str, Any] = {"transaction": transaction, "ok": good}
    if isinstance(answer, messages.OTPGrant):
        expires = datetime.datetime.fromtimestamp(answer.expires_at, datetime.timezone.utc)
        document["otp"] = {"code": answer.code, "message": answer.message, "expires": expires.isoformat()}
    else:
        document["confirmation"] = {"status": answer.status.name, "attempts_left": answer.attempts_left}
    stats = run.result.stats
    document["suite"] = run.result.suite.name
    document["crl_checked"] = run.crl_checked
    document["costs"] = {
        "bytes_sent": stats.bytes_sent,
        "bytes_received": stats.bytes_received,
        "frames_sent": stats.frames_sent,
        "frames_received": stats.frames_received,
        "round_trips": stats.flights_received,
        "handshake_ms": None if stats.handshake_seconds is None else round(stats.handshake_seconds * 1000, 3),
        "handshake_cpu_ms": None if stats.handshake_cpu_seconds is None else round(stats.handshake_cpu_seconds * 1000, 3),
        "session_ms": round(stats.elapsed() * 1000, 3),
    }
    return document


def describe_session_error(error: AlertError) -> str:
    """One line that says which way the session with the server failed. A refusal by the server
    and a hang-up say so in their detail already ("the server refused the session")."""
    alert = f"{error.alert.name}: {error.detail}" if error.detail else error.alert.name
    if isinstance(error, PeerUnreachable):
        return f"unreachable: {error.detail}"
    if isinstance(error, LocalRefusal):
        return f"{alert} (refused by this client)"
    return alert


class ClientCommandOptions(Command, ClientOptions):
    """Run one client session: request an OTP for a transaction, or confirm one."""

    synopsis = ClientOptions.synopsis
    optFlags: list[list[Any]] = [
        ["json", None, "Print one JSON document (the answer, the suite, the session's costs) instead of text."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if self["json"] and self["trace"]:
            raise usage.UsageError("--trace prints text: give --trace or --json, not both")
        self.session_error: AlertError | None = None

    async def _execute(self, reactor: Any, out: TextIO) -> int:
        if self["no-crl-check"]:
            sys.stderr.write(
                "tlsotp client: warning: --no-crl-check: a revoked server certificate will be accepted\n"
            )
        try:
            run = await run_client(reactor, self.run_settings(trace_out=out))
        except (PeerUnreachable, PeerRefused, LocalRefusal, SessionTruncated) as exc:
            self.session_error = exc
            raise CommandFailed(describe_session_error(exc)) from None
        good, text = render_answer(run.result.answer, self["transaction"])
        if self["json"]:
            write_json(out, run_json(run, self["transaction"], good))
            if not good:
                raise AnsweredFailure(text)
            return EXIT_OK
        if self["trace"]:
            out.write(summarise(run.result.stats, run.result.suite.name) + "\n")
        if not good:
            raise CommandFailed(text)
        out.write(text + "\n")
        return EXIT_OK

    def json_error(self, error: BaseException | None) -> dict[str, Any]:
        """Which way the session failed, and its alert, for scripts."""
        failed = self.session_error
        if failed is None:
            return {"kind": "failed", "alert": None}
        kind = {
            PeerUnreachable: "unreachable", PeerRefused: "refused_by_server", LocalRefusal: "refused_by_client",
            SessionTruncated: "truncated",
        }.get(type(failed), "failed")
        return {"kind": kind, "alert": None if isinstance(failed, PeerUnreachable) else failed.alert.name}

    def execute(self, reactor: Any, out: TextIO) -> Deferred[int]:
        return Deferred.fromCoroutine(self._execute(reactor, out))
