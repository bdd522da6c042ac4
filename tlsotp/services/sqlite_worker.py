"""One database resource owned by one worker thread, as a Twisted service: ``DatabaseWorker``.

Both stores use it: the bank server's OTP store (a ``sqlite3.Connection``, each call one
transaction, see ``sqlite_transaction``) and the TTP's (a ``tlsotp.ttp.store.Store`` inside an
``Issuer``, whose decisions each run in their own ``BEGIN IMMEDIATE`` transaction).

SQLite work must not block the reactor, and read-modify-write sequences (spend a token, count
a wrong guess) must not interleave: one thread running one call at a time gives both, with no
locking in Python. The resource is opened (and checked) in ``startService``, so a damaged or
unwritable database stops the start with its one-line reason; ``stopService`` lets the queued
calls finish, closes the resource on the worker thread, and then joins that (idle) thread, so
the reactor waits for no SQL while stopping either.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable, Concatenate, Generic, ParamSpec, TypeVar

from twisted.application import service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from tlsotp import database_checks

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class WorkerNotRunning(RuntimeError):
    """A call reached a database worker that is not started (or already stopped)."""


class DatabaseWorker(service.Service, Generic[T]):
    """Runs ``fn(resource, ...)`` on the one worker thread; ``open_resource`` makes the resource
    when the service starts (its exception stops the start), ``close_resource`` ends it."""

    def __init__(
        self,
        reactor: IReactorFromThreads,
        open_resource: Callable[[], T],
        close_resource: Callable[[T], None],
        thread_name: str = "database",
    ) -> None:
        self._reactor = reactor
        self._open_resource = open_resource
        self._close_resource = close_resource
        self.thread_name = thread_name
        self._resource: T | None = None
        self._pool: ThreadPool | None = None

    def startService(self) -> None:
        if self.running:
            return
        self._resource = self._open_resource()  # raises: not started, nothing to clean up
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=self.thread_name)
        self._pool.start()
        service.Service.startService(self)  # type: ignore[no-untyped-call]

    def run(self, fn: Callable[Concatenate[T, P], R], *args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
        """Queue ``fn(resource, *args, **kwargs)``; calls run one at a time, in order."""
        if self._pool is None or self._resource is None:
            return fail(WorkerNotRunning(f"the {self.thread_name} worker is not running"))
        return deferToThreadPool(self._reactor, self._pool, fn, self._resource, *args, **kwargs)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        pool, resource = self._pool, self._resource
        self._pool = self._resource = None
        if pool is None or resource is None:
            return succeed(None)
        # Queued after every call already queued: they finish (and commit) first.
        closing: Deferred[None] = deferToThreadPool(self._reactor, pool, self._close_resource, resource)

        def join(result: Any) -> Any:
            pool.stop()  # the thread is idle now: this join is immediate
            return result

        return closing.addBoth(join)

    def stop_now(self) -> None:
        """Stop on the calling thread, for a start-up abandoned before the reactor runs:
        ``stopService`` hands the close back through the reactor, which would never run, and
        the worker thread would keep the process from exiting. Nothing may be queued."""
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        pool, resource = self._pool, self._resource
        self._pool = self._resource = None
        if pool is not None:
            pool.stop()  # joins the idle thread
        if resource is not None:
            self._close_resource(resource)


def open_sqlite(path: Path, configure: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
    """Create the file private, open it, check it (``tlsotp.database_checks``), configure it;
    raises ``DatabaseUnusable`` (one line: which file, what is wrong, what to do)."""
    database_checks.check_directory(path)
    database_checks.create_private(path)
    try:
        with database_checks.private_files():
            connection = sqlite3.connect(path, timeout=10, check_same_thread=False)
            try:
                database_checks.check_connection(connection, path)
                configure(connection)
            except BaseException:
                connection.close()
                raise
    except sqlite3.Error as exc:
        raise database_checks.unusable(path, exc) or exc from None
    return connection


def sqlite_transaction(
    connection: sqlite3.Connection, path: Path, fn: Callable[..., R], /, *args: Any, **kwargs: Any
) -> R:
    """``fn(cursor, *args, **kwargs)`` in one transaction: committed on success, rolled back on
    an exception; an SQLite failure (a full disk, a damaged file) says which file and what to do."""
    try:
        with connection:
            # IMMEDIATE: take the write lock before the first read, so that another process
            # (a second bank worker on the same file) waits instead of reading what this
            # decision is about to change; the legacy implicit BEGIN comes only before the
            # first write, after the reads (a single use could then be accepted twice).
            connection.execute("BEGIN IMMEDIATE")
            return fn(connection.cursor(), *args, **kwargs)
    except sqlite3.Error as exc:
        raise database_checks.unusable(path, exc) or exc from None
