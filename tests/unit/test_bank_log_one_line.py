"""One log line per bank session (a per-session cost, issue 12): the grant's or the confirmation's
line names the peer, the client and the suite; no separate "handshake complete" line."""

from __future__ import annotations

from typing import cast

from twisted.internet import reactor
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from tests.client_loopback import LoopbackServerCase
from tlsotp.otp import messages
from tlsotp.services.otp_client import confirm_otp, request_otp


class OneLinePerSessionTests(LoopbackServerCase):
    async def test_issue_and_confirm_each_log_one_line_with_peer_client_and_suite(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(cast(ILogObserver, events.append))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, events.append))
        port = await self.listen()
        server = f"tcp:host=127.0.0.1:port={port}"
        issued = await request_otp(reactor, server, self.settings(), "pay 1")
        assert isinstance(issued.answer, messages.OTPGrant)
        await confirm_otp(reactor, server, self.settings(), "pay 1", issued.answer.code)
        await self.all_closed(2)
        bank = [formatEvent(e) for e in events if e.get("log_namespace") == "tlsotp.services.bank_server"]
        self.assertEqual(len(bank), 2, bank)
        for protocol, line, what in zip(self.accepted, bank, ("issued an OTP to alice.example", "confirmation from")):
            self.assertTrue(line.startswith(f"{protocol.peer}: {what}"), line)
            self.assertIn("alice.example", line)
            self.assertIn(f"suite {protocol.suite_name}", line)
            self.assertTrue(protocol.suite_name.startswith("TLSOTP_"), protocol.suite_name)
