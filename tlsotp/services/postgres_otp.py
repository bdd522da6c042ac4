"""The OTP authority on PostgreSQL (``--database``): ``tlsotp.otp.store``'s rules, shared by servers.

The same API as ``tlsotp.services.otp_authority.OTPAuthority`` (``issue``, ``confirm``,
``open``, ``close``, ``policy``, and ``worker``: the service the bank server starts and stops),
running the same rule functions, each in one PostgreSQL transaction that first takes the
(client, transaction) pair's advisory lock (``tlsotp.otp.postgres_store.lock_pair``), on a
bounded ``PostgresPool``. Starting creates or migrates the schema and checks the pepper.

The pepper is this server's file (``--otp-pepper-file``, by default the data dir's): every
server of one database must hold a copy of the same file. The first server to start on an empty
database makes the pepper (if its file does not exist yet) and records its check value; a later
server without the file, or with another one, refuses to start with one line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads

from tlsotp.database_url import PostgresTarget
from tlsotp.otp import postgres_store, store
from tlsotp.otp.postgres_store import QmarkCursor
from tlsotp.services.otp_authority import OTPPolicy, OTPRules
from tlsotp.services.postgres_pool import DEFAULT_POOL_SIZE, PostgresPool

R = TypeVar("R")


class OTPStoreRefused(Exception):
    """The database cannot hold this server's OTPs (a newer schema, another pepper); one line."""


def _issue(cursor: QmarkCursor, **kwargs: Any) -> store.IssuedOTP:
    postgres_store.lock_pair(cursor, kwargs["client"], kwargs["transaction"])
    return store.issue(cursor, **kwargs)


def _confirm(cursor: QmarkCursor, **kwargs: Any) -> store.Confirmation:
    postgres_store.lock_pair(cursor, kwargs["client"], kwargs["transaction"])
    return store.confirm(cursor, **kwargs)


def _touch(cursor: QmarkCursor) -> None:
    cursor.execute("UPDATE schema_version SET version = version WHERE store = ?", (postgres_store.STORE_NAME,))


class PostgresOTPAuthority(OTPRules):
    issue_rule = staticmethod(_issue)
    confirm_rule = staticmethod(_confirm)

    def __init__(
        self,
        reactor: IReactorFromThreads,
        target: PostgresTarget,
        pepper_file: Path,
        policy: OTPPolicy,
        clock: Callable[[], float] = time.time,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.policy = policy
        self.target = target
        self.pepper_file = pepper_file
        self._clock = clock
        self._pepper: bytes | None = None
        self.worker = PostgresPool(
            reactor, target.conninfo(), target.describe(), size=pool_size, on_start=self._prepare, thread_name="otp-db"
        )

    def _load_pepper(self, initialising: bool) -> bytes:
        if initialising:
            return store.load_or_create_pepper(self.pepper_file)
        if not self.pepper_file.exists():
            raise OTPStoreRefused(
                f"the OTP database {self.target.describe()} is already in use by another server: copy that "
                f"server's pepper file to {self.pepper_file} (mode 0600) before starting this one"
            )
        return store.load_or_create_pepper(self.pepper_file)

    def _prepare(self, cursor: QmarkCursor) -> None:
        try:
            self._pepper = postgres_store.create_schema(cursor, self._load_pepper)
        except (store.SchemaError, postgres_store.PepperMismatch) as exc:
            raise OTPStoreRefused(f"{self.target.describe()}: {exc}") from None
        except ValueError as exc:  # a pepper file of the wrong length
            raise OTPStoreRefused(str(exc)) from None

    def open(self) -> "Deferred[None]":
        """Start the pool (connect, create or migrate the schema, check the pepper) unless started."""
        return maybeDeferred(self.worker.startService)

    def _run(self, fn: Callable[..., R], **kwargs: object) -> "Deferred[R]":
        def run(_: None) -> "Deferred[R]":
            assert self._pepper is not None
            return self.worker.run(fn, pepper=self._pepper, **kwargs)

        return self.open().addCallback(run)

    def prune(self, expired_before: int) -> "Deferred[int]":
        return self.worker.run(store.prune, expired_before=expired_before)

    def check_writable(self) -> "Deferred[None]":
        """One committed write (``/health``): fails with ``StoreUnavailable`` while the database is down."""
        return self.worker.run(_touch)

    def stop_now(self) -> None:
        self.worker.stop_now()

    def close(self) -> "Deferred[None]":
        return self.worker.stopService()
