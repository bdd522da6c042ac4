"""The bank server logs no transaction text (personal data: amounts, payees) and no OTP code,
at any level; its lines still say who was issued or confirmed what (issue 9, logs)."""

from __future__ import annotations

from typing import cast

from twisted.internet import reactor
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from tests.client_loopback import LoopbackServerCase
from tlsotp.otp import messages
from tlsotp.services.otp_client import confirm_otp, request_otp

TRANSACTION = "Pay Rs 4,321 to Priya Sharma, account 998877"


class BankLogPrivacyTests(LoopbackServerCase):
    async def test_no_transaction_text_or_code_in_any_log_event(self) -> None:
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        port = await self.listen()
        server = f"tcp:host=127.0.0.1:port={port}"
        issued = await request_otp(reactor, server, self.settings(), TRANSACTION)
        assert isinstance(issued.answer, messages.OTPGrant)
        code = issued.answer.code
        confirmed = await confirm_otp(reactor, server, self.settings(), TRANSACTION, code)
        assert isinstance(confirmed.answer, messages.ConfirmResult)
        await self.all_closed(2)

        lines = [formatEvent(event) for event in events]
        issue_lines = [line for line in lines if "issued an OTP to alice.example" in line]
        confirm_lines = [line for line in lines if "confirmation from alice.example: accepted" in line]
        self.assertEqual(len(issue_lines), 1, lines)
        self.assertEqual(len(confirm_lines), 1, lines)
        self.assertIn(issued.answer.transaction_id.hex()[:16], issue_lines[0])
        for event in events:
            text = formatEvent(event) + repr(sorted((k, v) for k, v in event.items() if not k.startswith("log_")))
            self.assertNotIn("Priya", text)
            self.assertNotIn("998877", text)
            self.assertNotIn(TRANSACTION, text)
            self.assertNotIn(f" {code}", text)
