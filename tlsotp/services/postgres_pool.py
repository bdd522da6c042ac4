"""A bounded pool of PostgreSQL connections off the reactor thread, as a Twisted service.

``PostgresPool.run(fn, ...)`` runs ``fn(cursor, ...)`` in one transaction (committed when it
returns, rolled back when it raises) on one of ``size`` worker threads, each owning at most one
psycopg connection: at most ``size`` connections per server, however many sessions wait (those
queue, bounded by the bank server's connection limit). Every wait is bounded: connecting by
``connect_timeout``, each statement (lock waits included) by ``statement_timeout``, a
transaction left open by a hung server by ``idle_in_transaction_session_timeout``, after which
PostgreSQL rolls it back and frees its locks, and over TCP a database that went silent by
keepalives and ``tcp_user_timeout`` (about 10 s), so no thread waits on a dead peer for good.

The database going away is ``StoreUnavailable``: the connection that failed is dropped, and the
next call on that thread connects afresh, so the pool recovers by itself when PostgreSQL returns.
A call whose BEGIN fails on a connection made earlier (the server restarted since) is retried
once on a new connection: nothing of it reached the database. Nothing else is retried: a
failure after BEGIN may have committed (a lost COMMIT reply), and running a confirmation twice
could count one wrong guess twice. The pool logs "database unreachable" once when calls start
failing so, and "database reachable again" once a call begun after that succeeds.

psycopg (the ``postgresql`` extra) is imported only here, when a pool is made.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Concatenate, ParamSpec, TypeVar

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from tlsotp.otp.postgres_store import QmarkCursor

P = ParamSpec("P")
R = TypeVar("R")

log = Logger(namespace="tlsotp.services.postgres")

DEFAULT_POOL_SIZE = 4
DEFAULT_CONNECT_TIMEOUT = 5
DEFAULT_STATEMENT_TIMEOUT = 5.0
IDLE_IN_TRANSACTION_TIMEOUT = 10.0
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT = 10.0


class StoreUnavailable(Exception):
    """The database cannot be reached (or stopped answering in time): the session gets
    ``internal_error``; the pool logs it once per outage, not once per session."""


class PoolNotRunning(RuntimeError):
    """A call reached a pool that is not started (or already stopped)."""


class PostgresPool(service.Service):
    def __init__(
        self,
        reactor: IReactorFromThreads,
        conninfo: str,
        description: str,
        *,
        size: int = DEFAULT_POOL_SIZE,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
        on_start: Callable[[QmarkCursor], None] | None = None,
        thread_name: str = "postgres",
    ) -> None:
        import psycopg  # the postgresql extra: refused with one line by the caller if missing

        self._psycopg = psycopg
        self._reactor = reactor
        self._conninfo = conninfo
        self.description = description
        self.size = size
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._on_start = on_start
        self.thread_name = thread_name
        self._pool: ThreadPool | None = None
        self._local = threading.local()
        self._connections: set[Any] = set()
        self._connections_lock = threading.Lock()
        self._in_flight: set[Deferred[Any]] = set()
        # Outage bookkeeping, on the reactor thread: calls are numbered as they start.
        self._started_calls = 0
        self._outage_since: int | None = None  # the last call begun when the outage was noticed
        self._last_success = 0  # the last call begun when a success was last seen

    # -- connections (worker threads, and the start on the reactor thread) --

    def _connect(self) -> Any:
        psycopg = self._psycopg
        params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        # Bounds the URL does not set itself: the connect, and over TCP a peer that went silent
        # (keepalives, and tcp_user_timeout for unacknowledged writes), since statement_timeout
        # is the server's and cannot end a wait on a server that no longer answers.
        defaults: dict[str, Any] = {
            "application_name": "tlsotp-server",
            "connect_timeout": self._connect_timeout,
            "keepalives": 1,
            "keepalives_idle": KEEPALIVE_IDLE,
            "keepalives_interval": KEEPALIVE_INTERVAL,
            "keepalives_count": KEEPALIVE_COUNT,
            "tcp_user_timeout": int(TCP_USER_TIMEOUT * 1000),
        }
        extra = {key: value for key, value in defaults.items() if key not in params}
        try:
            connection = psycopg.connect(self._conninfo, autocommit=True, **extra)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to {self.description}: {_one_line(exc)}") from None
        try:
            milliseconds = int(self._statement_timeout * 1000)
            connection.execute(f"SET statement_timeout = {milliseconds}")
            connection.execute(f"SET idle_in_transaction_session_timeout = {int(IDLE_IN_TRANSACTION_TIMEOUT * 1000)}")
        except psycopg.Error as exc:
            connection.close()
            raise StoreUnavailable(f"{self.description}: {_one_line(exc)}") from None
        with self._connections_lock:
            self._connections.add(connection)
        return connection

    def _drop(self, connection: Any) -> None:
        with self._connections_lock:
            self._connections.discard(connection)
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        try:
            connection.close()
        except Exception:  # already dead: nothing to release
            pass

    def _transaction(self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        psycopg = self._psycopg
        for attempt in (1, 2):
            connection: Any = getattr(self._local, "connection", None)
            reused = connection is not None and not connection.closed
            if not reused:
                connection = self._local.connection = self._connect()
            begun = False
            try:
                with connection.transaction():
                    begun = True
                    return fn(QmarkCursor(connection.cursor()), *args, **kwargs)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                lost = connection.closed or connection.broken
                if lost:
                    self._drop(connection)
                if lost and reused and not begun and attempt == 1:
                    continue  # a connection the database dropped since its last use: nothing was sent
                raise StoreUnavailable(f"{self.description}: {_one_line(exc)}") from None
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                # A primary demoted to a standby after a failover: connect afresh (a multi-host
                # URL with target_session_attrs=read-write then finds the new primary).
                self._drop(connection)
                raise StoreUnavailable(f"{self.description} is read-only (a standby?): {_one_line(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the service --

    def startService(self) -> None:
        """Connect once and run ``on_start`` (create or migrate the schema) in one transaction,
        on this thread: a daemon starting has nothing else to do, and every wait is bounded.
        Raises ``StoreUnavailable`` (or ``on_start``'s exception): not started."""
        if self.running:
            return
        connection = self._connect()
        try:
            if self._on_start is not None:
                try:
                    with connection.transaction():
                        self._on_start(QmarkCursor(connection.cursor()))
                except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
                    raise StoreUnavailable(f"{self.description}: {_one_line(exc)}") from None
        finally:
            self._drop(connection)
        self._pool = ThreadPool(minthreads=0, maxthreads=self.size, name=self.thread_name)
        self._pool.start()
        service.Service.startService(self)  # type: ignore[no-untyped-call]

    def run(self, fn: Callable[Concatenate[QmarkCursor, P], R], *args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
        """``fn(cursor, *args, **kwargs)`` in one transaction on a worker thread."""
        if self._pool is None:
            return fail(PoolNotRunning(f"the {self.thread_name} pool is not running"))
        self._started_calls += 1
        ticket = self._started_calls
        d: Deferred[R] = deferToThreadPool(self._reactor, self._pool, self._transaction, fn, args, kwargs)
        self._in_flight.add(d)

        def done(result: Any) -> Any:
            self._in_flight.discard(d)
            if isinstance(result, Failure):
                if result.check(StoreUnavailable):  # type: ignore[no-untyped-call]
                    self._unavailable(ticket, str(result.value))
            else:
                self._succeeded(ticket)
            return result

        return d.addBoth(done)

    def _unavailable(self, ticket: int, error: str) -> None:
        # A call begun before the last success was seen is old news, not a new outage (a
        # connection refused while PostgreSQL was still starting, answered after another had
        # already got through): so one outage is one line, however the answers interleave.
        if self._outage_since is None and ticket > self._last_success:
            self._outage_since = self._started_calls
            log.error("database unreachable: {error}; sessions fail with internal_error until it returns", error=error)

    def _succeeded(self, ticket: int) -> None:
        self._last_success = self._started_calls
        if self._outage_since is not None and ticket > self._outage_since:
            self._outage_since = None
            log.info("database reachable again: {database}", database=self.description)

    @property
    def reachable(self) -> bool:
        """False from a noticed outage until a call begun after it succeeds."""
        return self._outage_since is None

    def stop_now(self) -> None:
        """Stop on the calling thread (a start-up abandoned before the reactor runs); nothing is queued."""
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.close()
            except Exception:
                pass

    def stopService(self) -> Deferred[None]:
        """Let the calls under way finish, then stop the (now idle) threads and close the connections."""
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        pool, self._pool = self._pool, None
        if pool is None:
            return succeed(None)
        waiting = DeferredList(list(self._in_flight), consumeErrors=True)

        def close(_: object) -> None:
            pool.stop()  # idle threads: the join is immediate
            with self._connections_lock:
                connections, self._connections = self._connections, set()
            for connection in connections:
                try:
                    connection.close()
                except Exception:
                    pass

        return waiting.addCallback(close)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
