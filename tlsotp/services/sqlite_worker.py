"""One database resource owned by one worker thread, as a Twisted service: ``DatabaseWorker``.

Both stores use it: the bank server's OTP store (a ``sqlite3.Connection`` on a
``SQLiteGroupWorker``, see below) and the TTP's (a ``tlsotp.ttp.store.Store`` inside an
``Issuer``, whose decisions each run in their own ``BEGIN IMMEDIATE`` transaction).

``SQLiteGroupWorker.transact`` is group commit: every call queued while the thread is busy, or
during the reactor iteration that found it idle, goes into the next transaction, each call in
its own SAVEPOINT (one that raises is rolled back alone and fails alone), and the whole group is
committed at once: one ``BEGIN IMMEDIATE``, one COMMIT (one fsync of the WAL under
``synchronous=FULL``), and one hop back to the reactor for all of them. No answer is given
before the commit that made it durable returns, so durability is that of one transaction per
call; under load it costs one fsync and one thread hop per group, not per call
(``benchmarks/otp_group_commit.py`` measures it).

SQLite work must not block the reactor, and read-modify-write sequences (spend a token, count
a wrong guess) must not interleave: one thread running one call at a time gives both, with no
locking in Python. The resource is opened (and checked) in ``startService``, so a damaged or
unwritable database stops the start with its one-line reason; ``stopService`` lets the queued
calls finish, closes the resource on the worker thread, and then joins that (idle) thread, so
the reactor waits for no SQL while stopping either.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Callable, Concatenate, Generic, ParamSpec, TypeVar

from twisted.application import service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure

from tlsotp import database_checks

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


#: One queued call: the function, its arguments, and the Deferred its outcome fires.
_Job = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "Deferred[Any]"]


class WorkerNotRunning(RuntimeError):
    """A call reached a database worker that is not started (or already stopped)."""


class DatabaseWorker(service.Service, Generic[T]):
    """Runs ``fn(resource, ...)`` on the one worker thread; ``open_resource`` makes the resource
    when the service starts (its exception stops the start), ``close_resource`` ends it.

    The thread is one ``threading.Thread`` reading a ``queue.SimpleQueue`` (implemented in C:
    no Python ``Condition`` per call) and answering through ``reactor.callFromThread``. That is
    what Twisted's ``deferToThreadPool`` on a one-thread ``ThreadPool`` did for each call, minus
    the pool's ``Team``/``LockWorker`` coordination, which a single thread does not need."""

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
        self._calls: SimpleQueue[_Job | None] | None = None
        self._thread: threading.Thread | None = None

    def startService(self) -> None:
        if self.running:
            return
        self._resource = self._open_resource()  # raises: not started, nothing to clean up
        calls: SimpleQueue[_Job | None] = SimpleQueue()
        thread = threading.Thread(target=_work, args=(calls, self._reactor.callFromThread), name=self.thread_name)
        thread.start()
        self._calls, self._thread = calls, thread
        service.Service.startService(self)  # type: ignore[no-untyped-call]

    def run(self, fn: Callable[Concatenate[T, P], R], *args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
        """Queue ``fn(resource, *args, **kwargs)``; calls run one at a time, in order."""
        if self._calls is None or self._resource is None:
            return fail(WorkerNotRunning(f"the {self.thread_name} worker is not running"))
        d: Deferred[R] = Deferred()
        self._calls.put((fn, (self._resource, *args), kwargs, d))
        return d

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        calls, thread, resource = self._calls, self._thread, self._resource
        self._calls = self._thread = self._resource = None
        if calls is None or thread is None or resource is None:
            return succeed(None)
        # Queued after every call already queued: they finish (and commit) first.
        closing: Deferred[None] = Deferred()
        calls.put((self._close_resource, (resource,), {}, closing))
        calls.put(None)  # then the thread ends

        def join(result: Any) -> Any:
            thread.join()  # it has answered the close: this join is immediate
            return result

        return closing.addBoth(join)

    def stop_now(self) -> None:
        """Stop on the calling thread, for a start-up abandoned before the reactor runs:
        ``stopService`` hands the close back through the reactor, which would never run, and
        the worker thread would keep the process from exiting. Nothing may be queued."""
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        calls, thread, resource = self._calls, self._thread, self._resource
        self._calls = self._thread = self._resource = None
        if calls is not None and thread is not None:
            calls.put(None)
            thread.join()  # the idle thread ends at once
        if resource is not None:
            self._close_resource(resource)


def _work(calls: SimpleQueue[_Job | None], call_from_thread: Callable[..., Any]) -> None:
    """The worker thread: each call in turn, its outcome handed to the reactor thread (a
    ``Failure`` made here, on this thread, for an exception of any kind); ``None`` ends it."""
    while True:
        job = calls.get()
        if job is None:
            return
        fn, args, kwargs, d = job
        del job  # hold nothing of a finished call while waiting for the next one
        try:
            result: Any = fn(*args, **kwargs)
        except BaseException:
            call_from_thread(d.errback, Failure())  # type: ignore[no-untyped-call]
        else:
            call_from_thread(d.callback, result)
        del fn, args, kwargs, d
        result = None


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


#: The most calls one group transaction holds; more wait for the next (bounds a group's latency).
MAX_GROUP = 256


#: A BEGIN IMMEDIATE that took longer than this waited for the write lock: SQLite's busy handler
#: sleeps at least 1 ms before it tries again, and taking a free lock takes microseconds.
LOCK_WAIT_SECONDS = 0.001


@dataclass
class LockWaits:
    """How often a group transaction had to wait for the database's write lock, which only
    another process (a second bank worker, a ``tlsotp`` command) holds: the cross-process
    contention an operator of ``--workers`` wants to see. Updated on the worker thread; read
    after it has ended, or as a snapshot. A wait can also be the thread getting Python's lock
    back after BEGIN returned; one process alone on the file shows how often that happens."""

    transactions: int = 0
    waited: int = 0
    waited_seconds: float = 0.0

    def record(self, seconds: float) -> None:
        self.transactions += 1
        if seconds > LOCK_WAIT_SECONDS:
            self.waited += 1
            self.waited_seconds += seconds

    def summary(self) -> str:
        return (f"{self.waited} of {self.transactions} group transactions waited over "
                f"{LOCK_WAIT_SECONDS * 1e3:g} ms for the write lock ({self.waited_seconds * 1e3:.0f} ms in all)")


def commit_group(
    connection: sqlite3.Connection,
    path: Path,
    calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
    lock_waits: LockWaits | None = None,
) -> list[tuple[bool, Any]]:
    """Run each ``fn(cursor, *args, **kwargs)`` in its own SAVEPOINT of one transaction, then
    commit once; returns ``(ok, value or exception)`` per call, in order. A call that raises is
    rolled back alone; if the transaction itself fails (BEGIN, a rollback, the COMMIT), or SQLite
    rolls it back on its own under a call (a full disk), every call fails with that (a
    ``DatabaseUnusable`` saying which file and what to do), and none runs after it. With
    ``lock_waits``, how long the BEGIN waited is recorded there."""
    outcomes: list[tuple[bool, Any]] = []
    try:
        began = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        if lock_waits is not None:
            lock_waits.record(time.perf_counter() - began)
        try:
            cursor = connection.cursor()
            for fn, args, kwargs in calls:
                cursor.execute("SAVEPOINT call")
                try:
                    value = fn(cursor, *args, **kwargs)
                except Exception as exc:
                    if not connection.in_transaction:
                        # SQLite rolled the whole group back (a full disk, an I/O error): every
                        # call of it is undone, so every call fails, with this cause.
                        raise
                    cursor.execute("ROLLBACK TO call")
                    cursor.execute("RELEASE call")
                    if isinstance(exc, sqlite3.Error):
                        exc = database_checks.unusable(path, exc) or exc
                    outcomes.append((False, exc))
                else:
                    cursor.execute("RELEASE call")
                    outcomes.append((True, value))
            connection.commit()
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise
    except sqlite3.Error as exc:
        failure: Exception = database_checks.unusable(path, exc) or exc
        return [(False, failure)] * len(calls)
    return outcomes


Item = TypeVar("Item")


class GroupWorker(DatabaseWorker[T], Generic[T, Item]):
    """A ``DatabaseWorker`` that hands its thread work in groups: ``submit(item)`` queues one
    item, and every item queued while the thread is busy, or during the reactor iteration that
    found it idle, goes to one ``run_group(resource, items)`` call on the thread (at most
    ``max_group`` of them). ``run_group`` returns ``(ok, value or exception)`` per item, in
    order, and must have made every item's effect durable before it returns: each item's
    Deferred fires only then, so no answer leaves before the commit that made it true."""

    def __init__(
        self,
        reactor: IReactorFromThreads,
        open_resource: Callable[[], T],
        close_resource: Callable[[T], None],
        run_group: Callable[[T, list[Item]], list[tuple[bool, Any]]],
        thread_name: str = "database",
        max_group: int = 256,
    ) -> None:
        super().__init__(reactor, open_resource, close_resource, thread_name)
        # An idle worker starts its next group at the end of the reactor iteration that queued the
        # group's first item (a zero-delay timed call runs once the I/O events of that iteration
        # have been handled), so the items other connections submit in that same iteration join
        # it: one hop and one fsync for all of them instead of one each.
        self._call_later = reactor.callLater if IReactorTime.providedBy(reactor) else None
        self._run_group = run_group
        self.max_group = max_group
        self._queue: deque[tuple[Item, Deferred[Any]]] = deque()
        self._in_flight = False
        self._idle: list[Deferred[None]] = []
        #: Groups run (committed or attempted) since the start: for tests and benchmarks.
        self.groups = 0

    def submit(self, item: Item) -> Deferred[Any]:
        """Queue ``item`` for the next group; fires with its value once the group has returned
        (committed), or fails with its exception."""
        if not self.running or self._resource is None:
            return fail(WorkerNotRunning(f"the {self.thread_name} worker is not running"))
        d: Deferred[Any] = Deferred()
        self._queue.append((item, d))
        if not self._in_flight:
            self._in_flight = True  # a group is coming: stopService waits for it
            if self._call_later is None:
                self._next_group()
            else:
                self._call_later(0, self._next_group)
        return d

    def _next_group(self) -> None:
        if not self._queue:
            self._in_flight = False
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)
            return
        self._in_flight = True
        group = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_group))]
        self.groups += 1
        running = self.run(self._run_group, [item for item, _ in group])

        def answer(outcomes: list[tuple[bool, Any]]) -> None:
            for (_, d), (ok, value) in zip(group, outcomes):
                if ok:
                    d.callback(value)
                else:
                    d.errback(value)

        def lost(failure: Any) -> None:  # the worker itself failed (not an SQL error)
            for _, d in group:
                d.errback(failure)

        running.addCallbacks(answer, lost).addBoth(lambda _: self._next_group())

    def stopService(self) -> Deferred[None]:
        """Refuse new items, run the queued ones, then close the resource."""
        if not self._in_flight:
            return super().stopService()
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        idle: Deferred[None] = Deferred()
        self._idle.append(idle)
        return idle.addCallback(lambda _: super(GroupWorker, self).stopService())


#: One call of a group transaction: ``fn(cursor, *args, **kwargs)``.
_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class SQLiteGroupWorker(GroupWorker[sqlite3.Connection, _Call]):
    """A ``GroupWorker`` owning one SQLite connection: group commit (``transact``, ``commit_group``)."""

    def __init__(
        self,
        reactor: IReactorFromThreads,
        path: Path,
        open_resource: Callable[[], sqlite3.Connection],
        thread_name: str = "database",
    ) -> None:
        self.lock_waits = LockWaits()
        lock_waits = self.lock_waits
        super().__init__(
            reactor, open_resource, sqlite3.Connection.close,
            lambda connection, calls: commit_group(connection, path, calls, lock_waits), thread_name, MAX_GROUP,
        )
        self.path = path

    def transact(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Deferred[R]:
        """Queue ``fn(cursor, *args, **kwargs)`` for the next group transaction; fires with its
        result once that transaction is committed, or fails with what it raised (rolled back)."""
        return self.submit((fn, args, kwargs))
