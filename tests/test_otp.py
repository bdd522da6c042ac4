"""The OTP application messages and the server's OTP store."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from tlsotp.alerts import Alert, AlertError
from tlsotp.otp import messages, store
from tlsotp.otp.authority import DATABASE_FILE, PEPPER_FILE, OTPAuthority, OTPPolicy
from tlsotp.otp.messages import ConfirmStatus

PEPPER = b"p" * 32


class MessageCodecTests(unittest.TestCase):
    def test_round_trip_every_message(self) -> None:
        for message in [
            messages.OTPRequest("Rs 1,00,000 to your friend's account"),
            messages.OTPGrant(b"\x01" * 16, "Rs 5 to Bob", "012345", 1_900_000_000, "The OTP ..."),
            messages.ConfirmRequest("Rs 5 to Bob", "000001"),
            messages.ConfirmResult(ConfirmStatus.locked, 0),
        ]:
            self.assertEqual(messages.decode(messages.encode(message)), message)

    def test_malformed_messages_are_typed_alerts(self) -> None:
        good = messages.encode(messages.ConfirmRequest("Rs 5 to Bob", "123456"))
        cases = {
            b"": Alert.decode_error,
            good[:-1]: Alert.decode_error,
            good + b"\x00": Alert.decode_error,
            b"\x63": Alert.unexpected_message,
            messages.encode(messages.OTPRequest("line\nbreak")): Alert.decode_error,
            messages.encode(messages.ConfirmRequest("Rs 5", "12a456")): Alert.decode_error,
            b"\x04\x09\x00": Alert.decode_error,
        }
        for data, alert in cases.items():
            with self.assertRaises(AlertError) as caught:
                messages.decode(data)
            self.assertEqual(caught.exception.alert, alert, data)

    def test_otp_sentence(self) -> None:
        self.assertEqual(
            messages.otp_message("Rs 1,00,000 to your friend's account", "256345"),
            "The OTP for transferring Rs 1,00,000 to your friend's account is 256345.",
        )


class StoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.db = sqlite3.connect(":memory:")
        store.create_schema(self.db.cursor())

    def issue(self, now: int = 1000, client: str = "alice.example", tx: str = "Rs 5 to Bob") -> store.IssuedOTP:
        with self.db:
            return store.issue(
                self.db.cursor(), pepper=PEPPER, client=client, transaction=tx, digits=6, ttl_seconds=60, now=now
            )

    def confirm(self, code: str, now: int = 1010, client: str = "alice.example", tx: str = "Rs 5 to Bob") -> store.Confirmation:
        with self.db:
            return store.confirm(
                self.db.cursor(), pepper=PEPPER, client=client, transaction=tx, code=code, max_attempts=3, now=now
            )

    def wrong(self, code: str) -> str:
        return str((int(code) + 1) % 10**6).zfill(6)

    def test_codes_are_stored_only_as_macs(self) -> None:
        issued = self.issue()
        self.assertEqual(len(issued.code), 6)
        dump = "\n".join(self.db.iterdump())
        self.assertNotIn(issued.code, dump.replace(issued.transaction_id.hex(), ""))

    def test_right_code_accepted_once(self) -> None:
        issued = self.issue()
        self.assertEqual(self.confirm(issued.code).status, ConfirmStatus.accepted)
        self.assertEqual(self.confirm(issued.code).status, ConfirmStatus.already_used)

    def test_expired_code_refused(self) -> None:
        issued = self.issue(now=1000)
        self.assertEqual(self.confirm(issued.code, now=1060).status, ConfirmStatus.expired)

    def test_wrong_guesses_lock_the_transaction(self) -> None:
        issued = self.issue()
        first = self.confirm(self.wrong(issued.code))
        self.assertEqual((first.status, first.attempts_left), (ConfirmStatus.wrong_code, 2))
        self.assertEqual(self.confirm(self.wrong(issued.code)).status, ConfirmStatus.wrong_code)
        self.assertEqual(self.confirm(self.wrong(issued.code)).status, ConfirmStatus.locked)
        self.assertEqual(self.confirm(issued.code).status, ConfirmStatus.locked)

    def test_otp_is_bound_to_client_and_transaction(self) -> None:
        issued = self.issue()
        self.assertEqual(self.confirm(issued.code, client="mallory.example").status, ConfirmStatus.unknown_transaction)
        self.assertEqual(self.confirm(issued.code, tx="Rs 9 to Eve").status, ConfirmStatus.unknown_transaction)
        self.assertEqual(self.confirm(issued.code).status, ConfirmStatus.accepted)

    def test_new_otp_supersedes_the_pending_one(self) -> None:
        old = self.issue(now=1000)
        new = self.issue(now=1001)
        if old.code != new.code:
            self.assertEqual(self.confirm(old.code).status, ConfirmStatus.wrong_code)
        self.assertEqual(self.confirm(new.code).status, ConfirmStatus.accepted)

    def test_code_generation_bounds(self) -> None:
        self.assertEqual(len(store.generate_code(8)), 8)
        self.assertRaises(ValueError, store.generate_code, 3)
        self.assertRaises(ValueError, store.generate_code, 13)


class AuthorityTests(unittest.TestCase):
    def test_issue_and_confirm_through_the_worker(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        now = [1000.0]
        authority = OTPAuthority(reactor, data_dir, OTPPolicy(digits=8, ttl_seconds=30), clock=lambda: now[0])
        self.addCleanup(authority.close)
        self.assertEqual(stat.S_IMODE(os.stat(data_dir / PEPPER_FILE).st_mode), 0o600)

        def issued(result: tuple[store.IssuedOTP, str]) -> object:
            otp, sentence = result
            self.assertEqual(len(otp.code), 8)
            self.assertEqual(sentence, f"The OTP for transferring Rs 5 to Bob is {otp.code}.")
            self.assertTrue((data_dir / DATABASE_FILE).exists())
            return authority.confirm("bob.example", "Rs 5 to Bob", otp.code)

        d = authority.issue("bob.example", "Rs 5 to Bob").addCallback(issued)
        d.addCallback(lambda c: self.assertEqual(c.status, ConfirmStatus.accepted))
        return d

    def test_policy_bounds(self) -> None:
        self.assertRaises(ValueError, OTPPolicy, digits=2)
        self.assertRaises(ValueError, OTPPolicy, ttl_seconds=0)
        self.assertRaises(ValueError, OTPPolicy, max_attempts=0)
