"""The server's OTP authority: issues and confirms OTPs off the reactor thread.

Runs the SQL of ``tlsotp.otp.store`` on a ``SQLiteGroupWorker`` (one connection, one thread), so
database work never blocks the reactor and every read-modify-write is serialised; the issues and
confirmations queued while it commits are committed together (group commit: one transaction,
one fsync, one thread hop per group), each answered only after its own commit.

``authority.worker`` is the Twisted service to start and stop (the bank server's service does,
as one of its children). Used alone, the authority starts it on first use (``open()``, or the
first ``issue``/``confirm``), and ``close()`` stops it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsotp import database_checks
from tlsotp.alerts import Alert, AlertError
from tlsotp.database_checks import Cause, DatabaseUnusable
from tlsotp.otp import store
from tlsotp.otp.messages import otp_message
from tlsotp.services.sqlite_worker import SQLiteGroupWorker, open_sqlite

R = TypeVar("R")

log = Logger(namespace="tlsotp.services.otp_authority")

DATABASE_FILE = "otp.sqlite3"
PEPPER_FILE = "otp-pepper.bin"


@dataclass(frozen=True)
class OTPPolicy:
    digits: int = 6
    ttl_seconds: int = 300
    max_attempts: int = 3

    def __post_init__(self) -> None:
        store.generate_code(self.digits)  # raises on an unsupported length
        if self.ttl_seconds < 1:
            raise ValueError("an OTP lifetime is at least one second")
        if not 1 <= self.max_attempts <= 100:
            raise ValueError("allowed wrong guesses are between 1 and 100")


def _refuse_locked(failure: Failure) -> store.IssuedOTP:
    failure.trap(store.TransactionLocked)  # type: ignore[no-untyped-call]
    raise AlertError(Alert.access_denied, str(failure.value))


class OTPRules:
    """Issue and confirm as the rules of ``tlsotp.otp.store`` say, for either backend: a backend
    gives ``_run(rule, **arguments)`` (one transaction, the pepper added) and may wrap a rule
    (``issue_rule``/``confirm_rule``: PostgreSQL takes a lock per pair first)."""

    policy: OTPPolicy
    _clock: Callable[[], float]
    issue_rule: Callable[..., store.IssuedOTP] = staticmethod(store.issue)
    confirm_rule: Callable[..., store.Confirmation] = staticmethod(store.confirm)

    def _run(self, fn: Callable[..., R], **kwargs: object) -> "Deferred[R]":
        raise NotImplementedError

    def issue(self, client: str, transaction: str) -> "Deferred[tuple[store.IssuedOTP, str]]":
        """Issue an OTP; fires with it and the sentence to show the client, or fails with
        ``AlertError(access_denied)`` when wrong confirmations locked the transaction."""
        d = self._run(
            self.issue_rule,
            client=client,
            transaction=transaction,
            digits=self.policy.digits,
            ttl_seconds=self.policy.ttl_seconds,
            now=int(self._clock()),
        )
        d.addErrback(_refuse_locked)
        return d.addCallback(lambda issued: (issued, otp_message(transaction, issued.code)))

    def confirm(self, client: str, transaction: str, code: str) -> "Deferred[store.Confirmation]":
        return self._run(
            self.confirm_rule,
            client=client,
            transaction=transaction,
            code=code,
            max_attempts=self.policy.max_attempts,
            now=int(self._clock()),
        )


class OTPAuthority(OTPRules):
    def __init__(
        self,
        reactor: IReactorFromThreads,
        data_dir: Path,
        policy: OTPPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._pepper = store.load_or_create_pepper(data_dir / PEPPER_FILE)
        self.path = data_dir / DATABASE_FILE
        self.worker = SQLiteGroupWorker(reactor, self.path, self._open_database, "otp-db")

    def _open_database(self) -> sqlite3.Connection:
        try:
            return open_sqlite(self.path, store.configure_connection)
        except store.SchemaError as exc:  # made by a newer tlsotp: one line, as for a damaged file
            raise DatabaseUnusable(self.path, Cause.damaged, str(exc)) from None

    def open(self) -> "Deferred[None]":
        """Start the worker (open and check the database) unless started; fails with
        ``DatabaseUnusable`` (one line) if it is damaged, not writable or on a full disk."""
        return maybeDeferred(self.worker.startService)

    def _run(self, fn: Callable[..., R], **kwargs: object) -> "Deferred[R]":
        if self.worker.running:  # the daemon's case: open() would fire at once, through one more Deferred
            return self.worker.transact(fn, pepper=self._pepper, **kwargs)

        def run(_: None) -> "Deferred[R]":
            return self.worker.transact(fn, pepper=self._pepper, **kwargs)

        return self.open().addCallback(run)

    def prune(self, expired_before: int) -> "Deferred[int]":
        # Not through _run: its open() would start a stopped worker again.
        return self.worker.transact(store.prune, expired_before=expired_before)

    def check_writable(self) -> "Deferred[None]":
        """One committed write on the worker (``/health``); ``DatabaseUnusable`` if it fails."""
        return self.worker.run(database_checks.check_writable, self.path)

    def stop_now(self) -> None:
        self.worker.stop_now()

    def close(self) -> "Deferred[None]":
        """Stop the worker: queued calls finish, then the connection closes; one log line says
        how often its transactions waited for another process's write lock (``LockWaits``)."""
        was_running = self.worker.running

        def said(result: None) -> None:
            if was_running:
                log.info("OTP store {path}: {lock_waits}", path=str(self.path), lock_waits=self.worker.lock_waits.summary())
            return result

        return self.worker.stopService().addCallback(said)
