"""``--otp-retention`` (issue 12): the bank server prunes OTP rows long past their expiry in the
background, on its store's worker, keeping the rows the lockout rule reads."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, cast

from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from tests.test_ttp_fixtures import mint_token, reactor
from tlsotp.commands import server_daemon
from tlsotp.otp import store
from tlsotp.pki.roles import Role
from tlsotp.server import BankServerSettings, RootPin
from tlsotp.server import build_service as build_bank
from tlsotp.services.bank_service import DEFAULT_OTP_RETENTION
from tlsotp.services.otp_authority import DATABASE_FILE
from tlsotp.services.ttp_service import TTPSettings
from tlsotp.services.ttp_service import build_service as build_ttp
from tlsotp.ttp.ca import init_ca

PEPPER = b"p" * 32
WAIT_SECONDS = 15.0


class RetentionOptionTests(unittest.SynchronousTestCase):
    def parse(self, *extra: str) -> server_daemon.Options:
        options = server_daemon.Options()
        base = Path(self.mktemp()).resolve()
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", str(base), "--name", "bank.example", "--ca-fingerprint", "sha256:" + "00" * 32,
            "--token", "t", *extra,
        ])
        return options

    def test_default_is_a_day_and_a_duration_is_accepted(self) -> None:
        self.assertEqual(server_daemon.settings_from(self.parse()).otp_retention, DEFAULT_OTP_RETENTION)
        self.assertEqual(DEFAULT_OTP_RETENTION, 86400.0)
        self.assertEqual(server_daemon.settings_from(self.parse("--otp-retention", "12h")).otp_retention, 43200.0)

    def test_a_zero_retention_is_refused(self) -> None:
        with self.assertRaises(usage.UsageError):
            self.parse("--otp-retention", "0")


class BackgroundPruneTests(unittest.TestCase):
    async def start_bank(self, base: Path, otp_retention: float) -> Any:
        """A TTP and a bank server enrolled from it, started; both stopped at cleanup."""
        ttp_dir = base / "ttp"
        ca = init_ca(ttp_dir)
        ttp = build_ttp(TTPSettings(data_dir=ttp_dir, ca=ca, listen="tcp:0:interface=127.0.0.1"), reactor)
        ttp.startService()
        self.addCleanup(ttp.stopService)
        bank = build_bank(BankServerSettings(
            data_dir=base / "bank", name="bank.example", listen="tcp:0:interface=127.0.0.1",
            ttp=f"tcp:host=127.0.0.1:port={cast(Any, ttp.port).getHost().port}",
            pin=RootPin.from_fingerprint(ca.fingerprint), token=str(mint_token(ttp_dir, "bank.example", Role.SERVER)),
            otp_retention=otp_retention,
        ), reactor)
        bank.startService()
        self.addCleanup(bank.stopService)
        await bank.ready
        return bank

    async def test_one_prune_goes_on_in_batches_until_none_is_left(self) -> None:
        base = Path(self.mktemp()).resolve()
        bank = await self.start_bank(base, otp_retention=3600.0)
        # The start-up prune (its first call was queued when its timer started, before ``ready``)
        # has answered, and ended, once a call queued now has answered.
        await bank.authority.prune(0)
        db = sqlite3.connect(base / "bank" / DATABASE_FILE)
        self.addCleanup(db.close)
        past = int(time.time()) - 2 * 86400
        count = 2 * store.PRUNE_BATCH + 5  # three batches: two full ones, then 5 rows
        with db:
            cursor = db.cursor()
            for i in range(count):
                store.issue(cursor, pepper=PEPPER, client="alice.example", transaction="t", digits=6,
                            ttl_seconds=60, now=past + i)
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        await bank.prune_otps()
        self.assertEqual(db.execute("SELECT COUNT(*) FROM otps").fetchone()[0], 0)
        pruned = [e for e in events if e.get("log_format", "").startswith("pruned")]
        self.assertEqual([e["n"] for e in pruned], [count])
        await bank.stopService()

    async def test_the_timer_prunes_expired_rows_and_keeps_the_lock(self) -> None:
        base = Path(self.mktemp()).resolve()
        bank = await self.start_bank(base, otp_retention=0.2)
        # Rows written by the store's own functions on a second connection (WAL: the daemon's
        # connection sees them), issued and settled a day ago, in one transaction: the prune
        # timer (every 0.2 s) then sees none of them or all of them, never a half-written pair.
        db = sqlite3.connect(base / "bank" / DATABASE_FILE)
        self.addCleanup(db.close)
        past = int(time.time()) - 86400
        with db:
            cursor = db.cursor()

            def write(**kw: Any) -> Any:
                return kw.pop("fn")(cursor, pepper=PEPPER, client="alice.example", now=past, **kw)

            used = write(fn=store.issue, transaction="paid", digits=6, ttl_seconds=60)
            write(fn=store.confirm, transaction="paid", code=used.code, max_attempts=1)
            write(fn=store.issue, transaction="never confirmed", digits=6, ttl_seconds=60)
            write(fn=store.issue, transaction="guessed", digits=6, ttl_seconds=60)
            write(fn=store.confirm, transaction="guessed", code="x", max_attempts=1)  # locks it
            self.assertEqual(cursor.execute("SELECT COUNT(*) FROM otps").fetchone()[0], 3)

        for _ in range(int(WAIT_SECONDS / 0.05)):
            if db.execute("SELECT COUNT(*) FROM otps").fetchone()[0] == 1:
                break
            await deferLater(reactor, 0.05, lambda: None)
        rows = db.execute("SELECT transaction_text, status FROM otps").fetchall()
        self.assertEqual(rows, [("guessed", "locked")])
        # The pair stays locked for the daemon: a new request for it is refused.
        assert bank.authority is not None
        with self.assertRaises(Exception) as refused:
            await bank.authority.issue("alice.example", "guessed")
        self.assertIn("locked", str(refused.exception))
        await bank.stopService()
        self.assertFalse(any(child.running for child in bank))
        self.assertFalse(bank.authority.worker.running)
