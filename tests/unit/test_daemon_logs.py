"""Logs (issue 9): ``--log-transactions`` puts the transaction text in the bank server's log
(off by default; never the code); every refusal is logged once, with its alert (or TTP refusal
code) and the peer; ``tlsotp.services.json_log`` finds twistd's ``--logfile`` as twistd does."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from twisted.internet import reactor
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.client_loopback import LoopbackServerCase
from tests.test_ttp_fixtures import cached_key, enroll_request, make_ttp, mint_token, start_ttp
from tlsotp.alerts import AlertError
from tlsotp.commands import server_daemon
from tlsotp.otp import messages
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.services.json_log import logfile_from_argv
from tlsotp.services.otp_client import confirm_otp, request_otp
from tlsotp.services.ttp_client import exchange
from tlsotp.ttp import wire
from tlsotp.ttp.tokens import Token
from tlsotp.ttp.wire import Refusal

TRANSACTION = "Pay Rs 4,321 to Priya Sharma, account 998877"


def recorded(testcase: unittest.TestCase) -> list[LogEvent]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


class LogTransactionsTests(LoopbackServerCase):
    async def test_log_transactions_logs_the_text_but_never_the_code(self) -> None:
        events = recorded(self)
        port = await self.listen(log_transactions=True)
        server = f"tcp:host=127.0.0.1:port={port}"
        issued = await request_otp(reactor, server, self.settings(), TRANSACTION)
        assert isinstance(issued.answer, messages.OTPGrant)
        await confirm_otp(reactor, server, self.settings(), TRANSACTION, issued.answer.code)
        await self.all_closed(2)
        lines = [formatEvent(event) for event in events]
        (issue,) = [line for line in lines if "issued an OTP to alice.example" in line]
        (confirm,) = [line for line in lines if "confirmation from alice.example: accepted" in line]
        self.assertTrue(issue.endswith(f": {TRANSACTION!r}"), issue)
        self.assertTrue(confirm.endswith(f" for {TRANSACTION!r}"), confirm)
        for event in events:
            self.assertNotIn(f" {issued.answer.code}", formatEvent(event))

    def test_the_flag_reaches_the_settings_and_is_off_by_default(self) -> None:
        def settings(*extra: str) -> bool:
            options = server_daemon.Options()
            options.parseOptions([  # type: ignore[no-untyped-call]
                "--data-dir", self.mktemp(), "--name", "bank.example", "--ca-fingerprint", "sha256:" + "ab" * 32,
                "--token", "tok-xyz", *extra,
            ])
            return server_daemon.settings_from(options).log_transactions

        self.assertEqual((settings(), settings("--log-transactions")), (False, True))


class RefusalLogTests(LoopbackServerCase):
    async def test_a_bank_refusal_is_one_line_with_alert_and_peer(self) -> None:
        events = recorded(self)
        port = await self.listen(allowed_clients=["bob.example"])
        with self.assertRaises(AlertError):
            await request_otp(reactor, f"tcp:host=127.0.0.1:port={port}", self.settings(), TRANSACTION)
        await self.all_closed(1)
        peer = self.accepted[0].peer
        lines = [formatEvent(event) for event in events if "bad_certificate" in formatEvent(event)]
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"{peer}: session ended, refused: bad_certificate: "), lines[0])


class TTPRefusalLogTests(unittest.TestCase):
    async def test_a_ttp_refusal_is_one_line_with_its_code_and_peer(self) -> None:
        data_dir = Path(self.mktemp())
        make_ttp(data_dir)
        _, endpoint = start_ttp(self, data_dir)
        token = mint_token(data_dir, "bank.example", Role.SERVER)
        events = recorded(self)
        forged = Token(token.token_id, b"\x00" * len(token.secret))
        request = enroll_request(forged, "bank.example", Role.SERVER, cached_key(KeyType.EC_P256, "log-test"))
        reply = await exchange(reactor, endpoint, request, 10)
        assert isinstance(reply, wire.Refused), reply
        self.assertEqual(reply.code, Refusal.bad_token_proof)
        lines = [formatEvent(event) for event in events if "bad_token_proof" in formatEvent(event)]
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^127\.0\.0\.1:\d+: refused bad_token_proof: ")


class JSONLogArgvTests(unittest.SynchronousTestCase):
    def test_logfile_is_read_as_twistd_reads_it(self) -> None:
        self.assertEqual(logfile_from_argv(["-n", "--pidfile", "x.pid", "--logfile", "a.log", "tlsotp-server", "-l", "tcp:1"]),
                         "a.log")
        self.assertEqual(logfile_from_argv(["-n", "-lb.log", "tlsotp-ttp"]), "b.log")
        self.assertEqual(logfile_from_argv(["--logf=c.log", "tlsotp-ttp"]), "c.log")
        # A plugin's own -l (tlsotp-server's --listen) is not twistd's: stdout.
        self.assertIsNone(logfile_from_argv(["-n", "tlsotp-server", "-l", "tcp:7001"]))
        self.assertIsNone(logfile_from_argv(["--no-such-option", "tlsotp-ttp"]))
