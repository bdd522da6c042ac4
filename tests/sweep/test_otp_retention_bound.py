"""``otp.sqlite3`` stays bounded under retention (issue 12): 100,000 OTPs issued (most confirmed,
some guessed wrong, a few pairs locked) through the store's own functions on a real file, with a
simulated clock, pruned as the daemon's timer would. The live row count stays under what the
retention window can hold, and the file stops growing: after the first windows, the pages freed
by each prune are reused (no VACUUM), so the page count levels off."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.trial import unittest

from tlsotp.otp import store
from tlsotp.otp.messages import ConfirmStatus

PEPPER = b"p" * 32
OTPS = 100_000
PER_SECOND = 10  # simulated issue rate
TTL = 60
RETENTION = 600
PRUNE_EVERY = 300
MAX_ATTEMPTS = 3
LOCKED_PAIRS = 20  # kept for good: a bounded record


class RetentionBoundTests(unittest.SynchronousTestCase):
    def test_rows_and_pages_stay_bounded(self) -> None:
        path = Path(self.mktemp())
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        store.configure_connection(db)
        pages: list[int] = []
        rows: list[int] = []
        now = 1_000_000
        next_prune = now + PRUNE_EVERY
        cursor = db.cursor()
        db.execute("BEGIN")
        for k in range(LOCKED_PAIRS):  # pairs guessed wrong until locked
            store.issue(cursor, pepper=PEPPER, client="mallory.example", transaction=f"locked {k}", digits=6,
                        ttl_seconds=TTL, now=now)
            for _ in range(MAX_ATTEMPTS):
                store.confirm(cursor, pepper=PEPPER, client="mallory.example", transaction=f"locked {k}",
                              code="wrong", max_attempts=MAX_ATTEMPTS, now=now)
        for n in range(OTPS):
            if n % PER_SECOND == 0:
                now += 1
            client, tx = f"c{n % 50}.example", f"tx {n}"
            issued = store.issue(cursor, pepper=PEPPER, client=client, transaction=tx, digits=6,
                                 ttl_seconds=TTL, now=now)
            if n % 10 == 1:  # a wrong guess first (kept until a later accepted code makes it moot)
                store.confirm(cursor, pepper=PEPPER, client=client, transaction=tx, code="wrong",
                              max_attempts=MAX_ATTEMPTS, now=now)
            if n % 10 != 7:  # one in ten never confirmed
                answer = store.confirm(cursor, pepper=PEPPER, client=client, transaction=tx, code=issued.code,
                                       max_attempts=MAX_ATTEMPTS, now=now)
                self.assertEqual(answer.status, ConfirmStatus.accepted)
            if now >= next_prune:
                # In batches until one deletes fewer than a batch, as BankServerService.prune_otps does.
                while store.prune(cursor, expired_before=now - RETENTION) >= store.PRUNE_BATCH:
                    db.commit()
                db.commit()
                next_prune += PRUNE_EVERY
                pages.append(db.execute("PRAGMA page_count").fetchone()[0])
                rows.append(db.execute("SELECT COUNT(*) FROM otps").fetchone()[0])
                db.execute("BEGIN")
        db.commit()
        locked = db.execute("SELECT COUNT(*) FROM otps WHERE status = 'locked'").fetchone()[0]
        self.assertEqual(locked, LOCKED_PAIRS)
        # At most what was issued within ttl + retention + one prune interval, plus the locks.
        window = PER_SECOND * (TTL + RETENTION + PRUNE_EVERY)
        self.assertLess(max(rows), window + LOCKED_PAIRS)
        self.assertGreater(len(pages), 20)
        # Steady state after the first windows: the second half of the run adds no pages but the
        # odd one or two where random 16-byte ids split a B-tree leaf elsewhere (2% of the file;
        # a file that did not reuse the pruned pages would grow with every row: tenfold here).
        settled = pages[len(pages) // 4: len(pages) // 2]
        self.assertLessEqual(max(pages[len(pages) // 2:]), max(settled) * 1.02)
        # Against the unpruned file, which would hold every row.
        self.assertLess(max(rows), OTPS // 5)
