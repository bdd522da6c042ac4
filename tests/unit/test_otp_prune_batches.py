"""The retention prune in batches (issue 12) ends where one whole prune would.

``store.prune`` deletes at most ``limit`` rows per statement so that a day's expired rows do not
hold the store's one thread (and every session) for seconds; the bank service repeats it until
a call deletes fewer than ``PRUNE_BATCH``. Hypothesis generates histories of requests, wrong
guesses and accepted codes over a few (client, transaction) pairs, and the rows left by batches
of every size are the rows left by one unlimited prune; what the lockout rule reads (each pair's
lock and its count of wrong guesses) is the same before and after."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from tlsotp.otp import store

PEPPER = b"p" * 32
PAIRS = [("alice.example", "tx a"), ("alice.example", "tx b"), ("bob.example", "tx a")]

#: One step of a history: (pair index, what happens, seconds later).
Step = tuple[int, str, int]
steps = st.lists(
    st.tuples(st.integers(0, len(PAIRS) - 1), st.sampled_from(["issue", "guess", "accept"]), st.integers(0, 200)),
    max_size=40,
)


def replay(db: sqlite3.Connection, history: list[Step]) -> int:
    """Run ``history`` through the store's own functions; returns the clock at its end."""
    now, codes = 1000, {}
    cursor = db.cursor()
    for pair, action, later in history:
        now += later
        client, transaction = PAIRS[pair]
        try:
            if action == "issue":
                codes[pair] = store.issue(cursor, pepper=PEPPER, client=client, transaction=transaction,
                                          digits=6, ttl_seconds=60, now=now).code
            else:
                code = codes.get(pair, "000000") if action == "accept" else "not a code"
                store.confirm(cursor, pepper=PEPPER, client=client, transaction=transaction, code=code,
                              max_attempts=3, now=now)
        except store.TransactionLocked:
            pass
    db.commit()
    return now


def rows(db: sqlite3.Connection) -> list[tuple[object, ...]]:
    return db.execute("SELECT rowid, client, transaction_text, status, failed_attempts FROM otps ORDER BY rowid").fetchall()


def lockout_view(db: sqlite3.Connection) -> list[tuple[bool, int]]:
    """Per pair: locked, and the wrong guesses counted against it (what ``confirm`` reads)."""
    view = []
    for client, transaction in PAIRS:
        locked = db.execute("SELECT 1 FROM otps WHERE client = ? AND transaction_text = ? AND status = 'locked'",
                            (client, transaction)).fetchone() is not None
        last_used = db.execute("SELECT MAX(rowid) FROM otps WHERE client = ? AND transaction_text = ? AND status = 'used'",
                               (client, transaction)).fetchone()[0] or 0
        guesses = db.execute("SELECT COALESCE(SUM(failed_attempts), 0) FROM otps WHERE client = ?"
                             " AND transaction_text = ? AND rowid > ?", (client, transaction, last_used)).fetchone()[0]
        view.append((locked, guesses))
    return view


class PruneBatchTests(unittest.SynchronousTestCase):
    def open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(Path(self.mktemp() + ".sqlite3")))
        store.configure_connection(db)
        self.addCleanup(db.close)
        return db

    @settings(max_examples=60, deadline=None)
    @given(history=steps, limit=st.integers(1, 4), cut=st.integers(0, 8000))
    def test_batches_end_where_one_prune_ends(self, history: list[Step], limit: int, cut: int) -> None:
        whole, batched = self.open(), self.open()
        end = replay(whole, history)
        self.assertEqual(replay(batched, history), end)
        expired_before = 1000 + cut
        before = lockout_view(whole)

        store.prune(whole.cursor(), expired_before=expired_before, limit=10**9)
        whole.commit()
        calls = 0
        while True:
            calls += 1
            removed = store.prune(batched.cursor(), expired_before=expired_before, limit=limit)
            batched.commit()
            self.assertLessEqual(removed, 2 * limit)
            if removed < limit:
                break
            self.assertLess(calls, 200)
        self.assertEqual(rows(batched), rows(whole))
        self.assertEqual(lockout_view(batched), before)

    def test_a_call_deletes_at_most_limit_rows_per_statement(self) -> None:
        db = self.open()
        cursor = db.cursor()
        for i in range(7):  # seven requests, the last one accepted: six superseded, one used
            code = store.issue(cursor, pepper=PEPPER, client="a", transaction="t", digits=6, ttl_seconds=60, now=i).code
        store.confirm(cursor, pepper=PEPPER, client="a", transaction="t", code=code, max_attempts=3, now=7)
        db.commit()
        self.assertEqual(store.prune(cursor, expired_before=10**6, limit=2), 3)  # 2 superseded + the used one
        self.assertEqual(store.prune(cursor, expired_before=10**6, limit=2), 2)
        self.assertEqual(store.prune(cursor, expired_before=10**6, limit=2), 2)
        self.assertEqual(store.prune(cursor, expired_before=10**6, limit=2), 0)
        self.assertEqual(rows(db), [])
