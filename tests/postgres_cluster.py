"""A throw-away PostgreSQL server for the tests, started from the binaries on the machine.

``initdb`` and ``pg_ctl`` run in a temporary directory; the server listens on a unix socket in
that directory only (``listen_addresses=''``), on a free port number (which names the socket
file). PostgreSQL refuses to run as root, so as root (CI runs as root) both run as the
``postgres`` system user (``runuser -u postgres --``) in a directory that user owns.

``shared_cluster(testcase)`` starts one server for the whole test run (stopped at exit) and
``PostgresCluster.create_database()`` gives each test its own database; tests that stop and
restart the server make their own ``PostgresCluster``. Without binaries the tests skip with one
reason, except under ``CI=true``, where binaries that are present but cannot start are a failure.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from twisted.trial.unittest import SkipTest, SynchronousTestCase

SUPERUSER = "tlsotp"
SYSTEM_USER = "postgres"


def find_binaries() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: PATH first, then the
    newest ``/usr/lib/postgresql/*/bin``."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    def version(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else 0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for directory in candidates:
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClusterError(RuntimeError):
    """The PostgreSQL server could not be created, started or stopped (the message says why)."""


class PostgresCluster:
    """One PostgreSQL server in its own temporary directory."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="tlsotp-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.socket_dir.mkdir()
        self.port = free_port()
        self.log = self.base / "server.log"
        if self.as_root:
            shutil.chown(self.base, SYSTEM_USER, SYSTEM_USER)
            shutil.chown(self.socket_dir, SYSTEM_USER, SYSTEM_USER)
        self.running = False
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.binaries / tool), *args]
        if self.as_root:
            argv = ["runuser", "-u", SYSTEM_USER, "--", *argv]
        done = subprocess.run(argv, cwd=self.base, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise ClusterError(f"{tool} {' '.join(args[:1])} failed ({done.returncode}): {done.stderr.strip()} {log[-2000:]}")

    def start(self, *, fsync: bool = False) -> None:
        """Start it; without ``fsync`` (the tests' case) it never syncs its WAL: fast, and a
        test's data need not survive the machine. A benchmark syncs, as a real server does."""
        durability = "" if fsync else " -c fsync=off"
        options = f"-k {self.socket_dir} -p {self.port} -c listen_addresses=''{durability} -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self.running = False
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def postmaster_pid(self) -> int:
        """The running server's main process (the first line of its ``postmaster.pid``)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` over the unix socket (no password: ``-A trust``)."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    def conninfo(self, database: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.conninfo(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def require_binaries(testcase: SynchronousTestCase) -> Path:
    """The binaries, or SkipTest with the one reason (never under CI=true with binaries present)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise SkipTest("psycopg is not installed (pip install -e '.[test]' installs it)") from None
    binaries = find_binaries()
    if binaries is None:
        raise SkipTest("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in /usr/lib/postgresql/*/bin")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise SkipTest("running as root and no runuser to start PostgreSQL as the postgres user")
    return binaries


def started_cluster(testcase: SynchronousTestCase, destroy_with: Callable[[Callable[[], None]], object]) -> PostgresCluster:
    """A started server; ``destroy_with`` registers its removal (a test cleanup, or atexit).
    Binaries that are present but cannot start skip the test, or fail it under ``CI=true``."""
    binaries = require_binaries(testcase)
    try:
        cluster = PostgresCluster(binaries)
        destroy_with(cluster.destroy)
        cluster.start()
    except (ClusterError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI") == "true":
            raise
        raise SkipTest(f"PostgreSQL binaries found in {binaries} but the server cannot start here: {exc}") from None
    return cluster


def new_cluster(testcase: SynchronousTestCase) -> PostgresCluster:
    """A started server of this test's own, destroyed when the test ends."""
    return started_cluster(testcase, testcase.addCleanup)


_shared: PostgresCluster | None = None


def shared_cluster(testcase: SynchronousTestCase) -> PostgresCluster:
    """One started server for the whole run (stopped and removed at exit); give each test its
    own database with ``create_database()``."""
    global _shared
    if _shared is None or not _shared.running:
        _shared = started_cluster(testcase, atexit.register)
    return _shared
