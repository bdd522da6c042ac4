"""One SQLite connection owned by one worker thread, driven from the reactor with Deferreds.

SQLite work must not block the reactor, and read-modify-write sequences (spend a token, count
a wrong guess) must not interleave: a single thread running one transaction at a time gives
both, with no locking in Python.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from tlsotp import database_checks

P = ParamSpec("P")
R = TypeVar("R")


class SQLiteWorker:
    """Runs ``fn(cursor, ...)`` in a transaction on the worker thread; commit or roll back."""

    def __init__(
        self,
        reactor: IReactorFromThreads,
        path: Path,
        configure: Callable[[sqlite3.Connection], None],
        name: str = "sqlite",
    ) -> None:
        self._reactor = reactor
        self._path = path
        self._configure = configure
        self._connection: sqlite3.Connection | None = None
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._pool.start()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = self._open_checked()
        return self._connection

    def _open_checked(self) -> sqlite3.Connection:
        """Create the file private, open it, check it (``tlsotp.database_checks``), configure it."""
        database_checks.check_directory(self._path)
        database_checks.create_private(self._path)
        try:
            with database_checks.private_files():
                connection = sqlite3.connect(self._path, timeout=10, check_same_thread=False)
                try:
                    database_checks.check_connection(connection, self._path)
                    self._configure(connection)
                except BaseException:
                    connection.close()
                    raise
        except sqlite3.Error as exc:
            raise database_checks.unusable(self._path, exc) or exc from None
        return connection

    def open(self) -> Deferred[None]:
        """Open and check the database now (on the worker thread), rather than on first use;
        fails with ``DatabaseUnusable`` if it is damaged, unwritable or on a full disk."""
        return deferToThreadPool(self._reactor, self._pool, self._connect).addCallback(lambda _: None)

    def _transact(self, fn: Callable[Concatenate[sqlite3.Cursor, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        connection = self._connect()
        try:
            with connection:  # commits on success, rolls back on an exception
                return fn(connection.cursor(), *args, **kwargs)
        except sqlite3.Error as exc:  # a full disk, a damaged file...: say which, and what to do
            raise database_checks.unusable(self._path, exc) or exc from None

    def run(
        self, fn: Callable[Concatenate[sqlite3.Cursor, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> Deferred[R]:
        return deferToThreadPool(self._reactor, self._pool, self._transact, fn, *args, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the worker thread (after queued work) and close the connection."""
        self._pool.stop()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
