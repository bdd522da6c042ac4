"""Which OTP store a bank server uses: the seam between the server and its two backends.

``OTPStore`` is what the bank server needs of an OTP authority; ``open_otp_store`` picks the
backend: the data dir's SQLite file (``OTPAuthority``, the default: one server owns it) or, with
``--database``, a PostgreSQL database that several servers share (``PostgresOTPAuthority``).
Both run the rule functions of ``tlsotp.otp.store``; only the transaction around them differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

from tlsotp.database_url import PostgresTarget
from tlsotp.otp.store import Confirmation, IssuedOTP
from tlsotp.services.otp_authority import PEPPER_FILE, OTPAuthority, OTPPolicy

__all__ = ["OTPStore", "open_otp_store"]


class OTPStore(Protocol):
    policy: OTPPolicy

    @property
    def worker(self) -> Service: ...

    def open(self) -> "Deferred[None]": ...

    def issue(self, client: str, transaction: str) -> "Deferred[tuple[IssuedOTP, str]]": ...

    def confirm(self, client: str, transaction: str, code: str) -> "Deferred[Confirmation]": ...

    def close(self) -> "Deferred[None]": ...

    def prune(self, expired_before: int) -> "Deferred[int]":
        """Delete rows expired before ``expired_before`` (``tlsotp.otp.store.prune``), straight on
        the worker: never starts a stopped one. Fires with the number deleted."""

    def check_writable(self) -> "Deferred[None]":
        """One committed write (``/health``); fails with why the database cannot take it."""

    def stop_now(self) -> None:
        """Stop on the calling thread: a start-up abandoned before the reactor runs."""


def open_otp_store(
    reactor: IReactorFromThreads,
    data_dir: Path,
    policy: OTPPolicy,
    database: PostgresTarget | None = None,
    pepper_file: Path | None = None,
) -> OTPStore:
    """The OTP store of a bank server: SQLite in ``data_dir`` unless ``database`` is given."""
    if database is None:
        return OTPAuthority(reactor, data_dir, policy)
    from tlsotp.services.postgres_otp import PostgresOTPAuthority

    return PostgresOTPAuthority(reactor, database, pepper_file or data_dir / PEPPER_FILE, policy)
