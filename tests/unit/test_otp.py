"""The OTP application messages and the server's OTP store."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Callable, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from twisted.internet import reactor
from twisted.trial import unittest

from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Writer
from tlsotp.otp import messages, store
from tlsotp.otp.messages import ConfirmStatus
from tlsotp.services.otp_authority import DATABASE_FILE, PEPPER_FILE, OTPAuthority, OTPPolicy

PEPPER = b"p" * 32
R = TypeVar("R")


def raw_request(transaction: str) -> bytes:
    """An OTPRequest encoded without the encoder's checks, as a hostile peer could send it."""
    return Writer().u8(messages.MessageType.otp_request).text16(transaction).getvalue()


def raw_confirm(transaction: str, code: str) -> bytes:
    return Writer().u8(messages.MessageType.confirm_request).text16(transaction).text16(code).getvalue()


class MessageCodecTests(unittest.SynchronousTestCase):
    def test_round_trip_every_message(self) -> None:
        for message in [
            messages.OTPRequest("Rs 1,00,000 to your friend's account"),
            messages.OTPGrant(b"\x01" * 16, "Rs 5 to Bob", "012345", 1_900_000_000, "The OTP ..."),
            messages.ConfirmRequest("Rs 5 to Bob", "000001"),
            messages.ConfirmResult(ConfirmStatus.locked, 0),
        ]:
            self.assertEqual(messages.decode(messages.encode(message)), message)  # type: ignore[arg-type]

    def test_malformed_messages_are_typed_alerts(self) -> None:
        good = messages.encode(messages.ConfirmRequest("Rs 5 to Bob", "123456"))
        cases = {
            b"": Alert.decode_error,
            good[:-1]: Alert.decode_error,
            good + b"\x00": Alert.decode_error,
            b"\x63": Alert.unexpected_message,
            raw_request("line\nbreak"): Alert.decode_error,
            raw_confirm("Rs 5", "12a456"): Alert.decode_error,
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


class SQLiteBackend:
    """The rules' SQLite backend for the tests: one in-memory database, each call a transaction
    (tests/process/test_otp_postgres.py runs the same tests on PostgreSQL)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")
        store.create_schema(self.db.cursor())

    def run(self, fn: Callable[..., R], **kwargs: object) -> R:
        with self.db:
            return fn(self.db.cursor(), **kwargs)

    def dump(self) -> str:
        return "\n".join(self.db.iterdump())

    def close(self) -> None:
        self.db.close()


class StoreTests(unittest.SynchronousTestCase):
    def make_backend(self) -> SQLiteBackend:
        return SQLiteBackend()

    def setUp(self) -> None:
        self.backend = self.make_backend()
        self.addCleanup(self.backend.close)

    def issue(self, now: int = 1000, client: str = "alice.example", tx: str = "Rs 5 to Bob") -> store.IssuedOTP:
        return self.backend.run(
            store.issue, pepper=PEPPER, client=client, transaction=tx, digits=6, ttl_seconds=60, now=now
        )

    def confirm(self, code: str, now: int = 1010, client: str = "alice.example", tx: str = "Rs 5 to Bob") -> store.Confirmation:
        return self.backend.run(
            store.confirm, pepper=PEPPER, client=client, transaction=tx, code=code, max_attempts=3, now=now
        )

    def wrong(self, code: str) -> str:
        return str((int(code) + 1) % 10**6).zfill(6)

    def test_codes_are_stored_only_as_macs(self) -> None:
        issued = self.issue()
        self.assertEqual(len(issued.code), 6)
        dump = self.backend.dump()
        self.assertNotIn(issued.code, dump.replace(issued.transaction_id.hex(), ""))

    def test_prune_in_batches_keeps_what_the_lockout_rule_reads(self) -> None:
        # Four superseded requests and an accepted code for one pair; two wrong guesses (not
        # locked) for another: the first five go, a batch of at most two per statement at a
        # time; the guessed row stays (its guesses still count), and so does its lockout.
        for i in range(4):
            self.issue(now=1000 + i)
        accepted = self.issue(now=1004)
        self.assertEqual(self.confirm(accepted.code, now=1005).status, ConfirmStatus.accepted)
        guessed = self.issue(now=1006, tx="guessed")
        for _ in range(2):
            self.confirm(self.wrong(guessed.code), now=1007, tx="guessed")
        batches: list[int] = []
        while not batches or batches[-1] >= 2:
            batches.append(self.backend.run(store.prune, expired_before=10**6, limit=2))
        self.assertEqual(batches, [3, 2, 0])  # 2 superseded + the used row; 2 superseded; none
        self.assertEqual(self.confirm(self.wrong(guessed.code), now=1008, tx="guessed").status, ConfirmStatus.locked)

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
        self.assertEqual(self.confirm(self.wrong(issued.code)), store.Confirmation(ConfirmStatus.wrong_code, 1))
        self.assertEqual(self.confirm(self.wrong(issued.code)), store.Confirmation(ConfirmStatus.locked, 0))
        self.assertEqual(self.confirm(issued.code), store.Confirmation(ConfirmStatus.locked, 0))

    def test_a_fresh_code_does_not_reset_the_count(self) -> None:
        """The lock holds for the transaction: guesses are counted over every code issued for it."""
        first = self.issue(now=1000)
        self.assertEqual(self.confirm(self.wrong(first.code)), store.Confirmation(ConfirmStatus.wrong_code, 2))
        second = self.issue(now=1001)
        self.assertEqual(self.confirm(self.wrong(second.code)), store.Confirmation(ConfirmStatus.wrong_code, 1))
        third = self.issue(now=1002)
        self.assertEqual(self.confirm(self.wrong(third.code)), store.Confirmation(ConfirmStatus.locked, 0))
        self.assertEqual(self.confirm(third.code), store.Confirmation(ConfirmStatus.locked, 0))

    def test_an_accepted_code_ends_the_count(self) -> None:
        """A later request with the same text is a new transaction: earlier misses do not count."""
        first = self.issue(now=1000)
        self.confirm(self.wrong(first.code))
        self.confirm(self.wrong(first.code))
        self.assertEqual(self.confirm(first.code), store.Confirmation(ConfirmStatus.accepted, 0))
        second = self.issue(now=1001)
        self.assertEqual(self.confirm(self.wrong(second.code)), store.Confirmation(ConfirmStatus.wrong_code, 2))

    def test_a_locked_transaction_gets_no_new_code(self) -> None:
        issued = self.issue()
        for _ in range(3):
            self.confirm(self.wrong(issued.code))
        with self.assertRaises(store.TransactionLocked):
            self.issue(now=1001)
        self.assertEqual(self.confirm(issued.code).status, ConfirmStatus.locked)
        # Only that pair: the same client's other transactions, and other clients, are unaffected.
        other = self.issue(now=1002, tx="Rs 6 to Bob")
        self.assertEqual(self.confirm(other.code, tx="Rs 6 to Bob").status, ConfirmStatus.accepted)
        bobs = self.issue(now=1003, client="bob.example")
        self.assertEqual(self.confirm(bobs.code, client="bob.example").status, ConfirmStatus.accepted)

    def test_attempts_left_is_zero_except_after_a_wrong_code(self) -> None:
        self.assertEqual(self.confirm("123456"), store.Confirmation(ConfirmStatus.unknown_transaction, 0))
        issued = self.issue(now=1000)
        self.assertEqual(self.confirm(self.wrong(issued.code)).attempts_left, 2)
        self.assertEqual(self.confirm(issued.code, now=1060), store.Confirmation(ConfirmStatus.expired, 0))
        self.assertEqual(self.confirm(issued.code), store.Confirmation(ConfirmStatus.accepted, 0))
        self.assertEqual(self.confirm(issued.code), store.Confirmation(ConfirmStatus.already_used, 0))
        for status in ConfirmStatus:
            # every Confirmation the store can return is one the wire format accepts
            left = 1 if status is ConfirmStatus.wrong_code else 0
            self.assertEqual(messages.decode(messages.encode(messages.ConfirmResult(status, left))).attempts_left, left)  # type: ignore[union-attr]

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

    def test_a_re_request_on_a_server_whose_clock_is_behind_is_still_the_newest(self) -> None:
        """Servers sharing a database may disagree on the time: the newest code is the one to check."""
        self.issue(now=1005)
        newer = self.issue(now=1000)  # issued later, by a clock 5 s behind
        self.assertEqual(self.confirm(newer.code, now=1001).status, ConfirmStatus.accepted)

    def test_code_generation_bounds(self) -> None:
        self.assertEqual(len(store.generate_code(8)), 8)
        self.assertRaises(ValueError, store.generate_code, 3)
        self.assertRaises(ValueError, store.generate_code, 13)


class AuthorityTests(unittest.TestCase):
    def test_issue_and_confirm_through_the_worker(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        now = [1000.0]
        authority = OTPAuthority(reactor, data_dir, OTPPolicy(digits=8, ttl_seconds=30), clock=lambda: now[0])  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(authority.close)
        self.assertEqual(stat.S_IMODE(os.stat(data_dir / PEPPER_FILE).st_mode), 0o600)

        def issued(result: tuple[store.IssuedOTP, str]) -> object:
            otp, sentence = result
            self.assertEqual(len(otp.code), 8)
            self.assertEqual(sentence, f"The OTP for transferring Rs 5 to Bob is {otp.code}.")
            self.assertTrue((data_dir / DATABASE_FILE).exists())
            return authority.confirm("bob.example", "Rs 5 to Bob", otp.code)

        d = authority.issue("bob.example", "Rs 5 to Bob").addCallback(issued)
        d.addCallback(lambda c: self.assertEqual(c.status, ConfirmStatus.accepted))  # type: ignore[call-overload]
        return d  # type: ignore[return-value]

    def test_a_locked_transaction_is_refused_with_access_denied(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        authority = OTPAuthority(reactor, data_dir, OTPPolicy(max_attempts=1))  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(authority.close)

        def issued(result: tuple[store.IssuedOTP, str]) -> object:
            wrong = str((int(result[0].code) + 1) % 10**6).zfill(6)
            return authority.confirm("bob.example", "Rs 5 to Bob", wrong)

        def locked(confirmation: store.Confirmation) -> object:
            self.assertEqual(confirmation, store.Confirmation(ConfirmStatus.locked, 0))
            return self.assertFailure(authority.issue("bob.example", "Rs 5 to Bob"), AlertError)

        d = authority.issue("bob.example", "Rs 5 to Bob").addCallback(issued).addCallback(locked)  # type: ignore[call-overload]
        d.addCallback(lambda error: self.assertEqual(error.alert, Alert.access_denied))
        return d

    def test_policy_bounds(self) -> None:
        self.assertRaises(ValueError, OTPPolicy, digits=2)
        self.assertRaises(ValueError, OTPPolicy, ttl_seconds=0)
        self.assertRaises(ValueError, OTPPolicy, max_attempts=0)


class LockoutModel(RuleBasedStateMachine):
    """The store against the lockout rules of docs/protocol.rst, written as a tiny model."""

    make_backend: Callable[[], SQLiteBackend] = SQLiteBackend

    def __init__(self) -> None:
        super().__init__()
        self.backend = type(self).make_backend()
        self.now = 1000
        self.max_attempts = 3
        self.pairs: dict[str, dict[str, object]] = {}

    @initialize(max_attempts=st.integers(1, 4))
    def policy(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts

    def model(self, tx: str) -> dict[str, object]:
        return self.pairs.setdefault(tx, {"locked": False, "failed": 0, "newest": None})

    @rule(tx=st.sampled_from(["Rs 5 to Bob", "Rs 6 to Bob"]))
    def request(self, tx: str) -> None:
        m = self.model(tx)
        try:
            issued = self.backend.run(
                store.issue, pepper=PEPPER, client="alice.example", transaction=tx, digits=6,
                ttl_seconds=60, now=self.now,
            )
        except store.TransactionLocked:
            assert m["locked"], "refused a new code for an unlocked transaction"
            return
        assert not m["locked"], "issued a code for a locked transaction"
        m["newest"] = {"code": issued.code, "expires": issued.expires_at, "used": False}

    @rule(tx=st.sampled_from(["Rs 5 to Bob", "Rs 6 to Bob"]), right=st.booleans())
    def confirm(self, tx: str, right: bool) -> None:
        m = self.model(tx)
        newest = m["newest"]
        code = "000000"
        if isinstance(newest, dict):
            code = str(newest["code"]) if right else str((int(str(newest["code"])) + 1) % 10**6).zfill(6)
        got = self.backend.run(
            store.confirm, pepper=PEPPER, client="alice.example", transaction=tx, code=code,
            max_attempts=self.max_attempts, now=self.now,
        )
        if not isinstance(newest, dict):
            want = store.Confirmation(ConfirmStatus.unknown_transaction, 0)
        elif m["locked"]:
            want = store.Confirmation(ConfirmStatus.locked, 0)
        elif newest["used"]:
            want = store.Confirmation(ConfirmStatus.already_used, 0)
        elif self.now >= int(str(newest["expires"])):
            want = store.Confirmation(ConfirmStatus.expired, 0)
        elif right:
            newest["used"] = True
            m["failed"] = 0
            want = store.Confirmation(ConfirmStatus.accepted, 0)
        else:
            m["failed"] = int(str(m["failed"])) + 1
            if int(str(m["failed"])) >= self.max_attempts:
                m["locked"] = True
                want = store.Confirmation(ConfirmStatus.locked, 0)
            else:
                want = store.Confirmation(ConfirmStatus.wrong_code, self.max_attempts - int(str(m["failed"])))
        assert got == want, (got, want)
        # whatever the store answers, the wire format accepts
        messages.decode(messages.encode(messages.ConfirmResult(got.status, got.attempts_left)))

    @rule(seconds=st.integers(1, 90))
    def wait(self, seconds: int) -> None:
        self.now += seconds

    def teardown(self) -> None:
        self.backend.close()


class LockoutModelTests(unittest.SynchronousTestCase):
    def test_the_store_follows_the_lockout_rules(self) -> None:
        run_state_machine_as_test(LockoutModel)
