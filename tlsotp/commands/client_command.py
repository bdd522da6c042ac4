"""``tlsotp client``: one session with the server, the answer on stdout, an exit code.

Exit codes: 0 the OTP was received and verified (or a confirmation accepted); 1 any refusal or
failure (the alert or reason on stderr, one line); 2 a usage error.
"""

from __future__ import annotations

import datetime
import sys
from typing import Any, TextIO

from twisted.internet.defer import Deferred

from tlsotp.commands.client_options import ClientOptions
from tlsotp.commands.client_run import run_client
from tlsotp.commands.common import EXIT_OK, Command, CommandFailed
from tlsotp.commands.trace import summarise
from tlsotp.otp import messages


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


class ClientCommandOptions(Command, ClientOptions):
    """Run one client session: request an OTP for a transaction, or confirm one."""

    synopsis = ClientOptions.synopsis

    async def _execute(self, reactor: Any, out: TextIO) -> int:
        if self["no-crl-check"]:
            sys.stderr.write(
                "tlsotp client: warning: --no-crl-check: a revoked server certificate will be accepted\n"
            )
        run = await run_client(reactor, self, trace_out=out)
        good, text = render_answer(run.result.answer, self["transaction"])
        if self["trace"]:
            out.write(summarise(run.result.stats, run.result.suite.name) + "\n")
        if not good:
            raise CommandFailed(text)
        out.write(text + "\n")
        return EXIT_OK

    def execute(self, reactor: Any, out: TextIO) -> Deferred[int]:
        return Deferred.fromCoroutine(self._execute(reactor, out))
