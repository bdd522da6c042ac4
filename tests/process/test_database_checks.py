"""A damaged, unwritable or full database is refused with one line, never used (issue 6, part 5).

Real SQLite files throughout. The damage is real too: a writer in WAL mode is killed with
``kill -9`` while its ``-wal`` holds frames, and the database file is then cut to half its size,
as a failing disk or a careless copy leaves it. The daemons and the operator's commands run as
real subprocesses.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.processes import TLSOTP, TWISTD, subprocess_env
from tests.test_ttp_fixtures import TTPFixture, enroll_request
from tlsotp import database_checks
from tlsotp.commands import server_daemon
from tlsotp.commands.demo import mint, port_of
from tlsotp.commands.ttp_daemon import TTPService
from tlsotp.database_checks import Cause, DatabaseUnusable, check_connection, check_database
from tlsotp.pki.roles import Role
from tlsotp.services.bank_service import build_service
from tlsotp.services.otp_authority import DATABASE_FILE, OTPAuthority, OTPPolicy
from tlsotp.ttp import wire
from tlsotp.ttp.ca import TTPPaths, init_ca
from tlsotp.ttp.store import Store, StoreError
from tlsotp.ttp.wire import Refusal

WAIT_SECONDS = 30.0

# Grows the database, checkpoints, then leaves frames in its -wal and waits to be killed.
_WRITER = r"""
import os, sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA journal_mode=WAL")
connection.execute("PRAGMA wal_autocheckpoint=0")
connection.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
for _ in range(200):
    connection.execute("INSERT INTO filler VALUES (?)", (os.urandom(2000),))
connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
for _ in range(5):
    connection.execute("INSERT INTO filler VALUES (?)", (os.urandom(2000),))
print("ready", flush=True)
sys.stdin.read()
"""


def damage_leaving_wal(db: Path) -> None:
    """kill -9 a writer holding ``db`` (its -wal stays, with frames), then cut ``db`` to half."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert writer.stdout is not None and writer.stdin is not None
    try:
        assert writer.stdout.readline() == b"ready\n"
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
        writer.stdin.close()
    wal = db.with_name(db.name + "-wal")
    assert wal.stat().st_size > 0, "the writer's -wal must survive its kill -9"
    os.truncate(db, db.stat().st_size // 2)


def _run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a system tool; a missing one fails like a refused one (returncode 127, a message)."""
    if shutil.which(argv[0]) is None:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: command not found")
    return subprocess.run(list(argv), capture_output=True, text=True)


def make_unwritable(testcase: unittest.SynchronousTestCase, directory: Path) -> None:
    """Make ``directory`` refuse new files, also to root (who ignores permission bits)."""
    if os.geteuid() != 0:
        os.chmod(directory, 0o500)
        testcase.addCleanup(os.chmod, directory, 0o700)
        return
    # As root: the immutable attribute stops even root from creating files in the directory.
    done = _run_tool("chattr", "+i", str(directory))
    if done.returncode != 0:
        raise unittest.SkipTest(
            "running as root, which writes through permission bits, and 'chattr +i' is not "
            f"supported on this file system ({done.stderr.strip()}): no way to make a directory read-only"
        )
    testcase.addCleanup(subprocess.run, ["chattr", "-i", str(directory)], check=True)


def tiny_disk(testcase: unittest.SynchronousTestCase, size: str = "512k") -> Path:
    """A real file system of ``size`` (a tmpfs), unmounted at cleanup; skipped, saying why,
    where this process may not mount one (not root, or no CAP_SYS_ADMIN in a container)."""
    where = Path(testcase.mktemp()).resolve()
    where.mkdir()
    done = _run_tool("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where))
    if done.returncode != 0:
        raise unittest.SkipTest(
            f"a full disk needs a small file system to fill, and mounting a tmpfs failed here: {done.stderr.strip()}"
            " (the SQLITE_FULL message is still tested with max_page_count)"
        )
    testcase.addCleanup(subprocess.run, ["umount", str(where)], check=True)
    return where


def fill(directory: Path) -> None:
    """Write a file in ``directory`` until its file system has no byte left."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class CheckTests(unittest.SynchronousTestCase):
    """``tlsotp.database_checks`` on real files."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(mode=0o700)
        self.db = self.dir / "test.sqlite3"

    def make_db(self) -> None:
        connection = sqlite3.connect(self.db, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE t (x INTEGER)")
        connection.execute("INSERT INTO t VALUES (1)")
        connection.close()

    def assertUnusable(self, cause: Cause, advice: str) -> DatabaseUnusable:
        with self.assertRaises(DatabaseUnusable) as caught:
            check_database(self.db)
        error = caught.exception
        self.assertEqual(error.cause, cause, str(error))
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertIn(str(self.db), message)
        self.assertIn(advice, message)
        return error

    def test_an_intact_database_passes_and_is_not_changed(self) -> None:
        self.make_db()
        check_database(self.db)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["test.sqlite3"])  # no scratch file left
        connection = sqlite3.connect(self.db)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("SELECT x FROM t").fetchall(), [(1,)])
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone(), (0,))

    def test_a_missing_database_in_a_writable_directory_passes_and_is_not_created(self) -> None:
        check_database(self.db)
        self.assertFalse(self.db.exists())

    def test_truncated_with_a_leftover_wal_is_damaged(self) -> None:
        self.make_db()
        damage_leaving_wal(self.db)
        # What an open-and-read-one-row check saw: the first page still reads.
        connection = sqlite3.connect(self.db)
        self.assertEqual(connection.execute("SELECT x FROM t").fetchall(), [(1,)])
        connection.close()
        self.assertUnusable(Cause.damaged, "restore it (with its -wal file, if any) from a backup")

    def test_garbage_is_damaged(self) -> None:
        self.db.write_bytes(b"this is no database, only some text " * 200)
        self.assertUnusable(Cause.damaged, "from a backup")

    def test_a_corrupted_page_is_damaged(self) -> None:
        connection = sqlite3.connect(self.db, isolation_level=None)
        connection.execute("CREATE TABLE t (x TEXT)")
        connection.execute("CREATE INDEX t_x ON t (x)")
        connection.executemany("INSERT INTO t VALUES (?)", [(f"row {i:05}",) for i in range(2000)])
        connection.close()
        data = bytearray(self.db.read_bytes())
        page = 4096
        for offset in range(3 * page + 100, 3 * page + 600):  # inside a b-tree page, past its header
            data[offset] ^= 0x5A
        self.db.write_bytes(bytes(data))
        self.assertUnusable(Cause.damaged, "from a backup")

    def test_unwritable_directory(self) -> None:
        self.make_db()
        make_unwritable(self, self.dir)
        error = self.assertUnusable(Cause.read_only, "make the file and its directory writable")
        self.assertIn("cannot be written", str(error))
        self.assertNotIn("damaged", str(error))

    def test_a_directory_in_place_of_the_file(self) -> None:
        self.db.mkdir()
        self.assertUnusable(Cause.not_a_file, "move it aside")

    def test_busy_is_busy(self) -> None:
        self.make_db()
        holder = sqlite3.connect(self.db, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")
        connection = sqlite3.connect(self.db, isolation_level=None, timeout=0)
        self.addCleanup(connection.close)
        with self.assertRaises(DatabaseUnusable) as caught:
            check_connection(connection, self.db)
        self.assertEqual(caught.exception.cause, Cause.busy)
        self.assertIn("is locked by another process", str(caught.exception))

    def test_a_full_disk_is_a_full_disk(self) -> None:
        """SQLITE_FULL, made real by capping the pages the file may have (max_page_count)."""
        self.make_db()
        connection = sqlite3.connect(self.db, isolation_level=None)
        self.addCleanup(connection.close)
        (pages,) = connection.execute("PRAGMA page_count").fetchone()
        connection.execute(f"PRAGMA max_page_count = {pages}")
        with self.assertRaises(sqlite3.Error) as caught:
            connection.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
        self.assertEqual(caught.exception.sqlite_errorname, "SQLITE_FULL")
        error = database_checks.unusable(self.db, caught.exception)
        assert error is not None
        self.assertEqual(error.cause, Cause.disk_full)
        self.assertIn("the disk is full", str(error))
        self.assertIn("free disk space", str(error))
        self.assertNotIn("busy", database_checks.describe(caught.exception))
        self.assertIn("disk is full", database_checks.describe(caught.exception))

    def test_what_each_sqlite_code_means(self) -> None:
        for name, cause in [
            ("SQLITE_CORRUPT", Cause.damaged), ("SQLITE_NOTADB", Cause.damaged), ("SQLITE_FULL", Cause.disk_full),
            ("SQLITE_READONLY", Cause.read_only), ("SQLITE_CANTOPEN", Cause.read_only), ("SQLITE_BUSY", Cause.busy),
            ("SQLITE_IOERR", Cause.io_error),
        ]:
            error = sqlite3.OperationalError("x")
            error.sqlite_errorcode = getattr(sqlite3, name)  # type: ignore[attr-defined]
            self.assertEqual(database_checks.sqlite_cause(error), cause, name)
            extended = sqlite3.OperationalError("x")
            extended.sqlite_errorcode = getattr(sqlite3, name) | (1 << 8)  # type: ignore[attr-defined]
            self.assertEqual(database_checks.sqlite_cause(extended), cause, f"{name} (extended)")
        self.assertIsNone(database_checks.sqlite_cause(sqlite3.OperationalError("no such table: x")))
        self.assertEqual(database_checks.describe(sqlite3.OperationalError("no such table: x")), "failed")

    def test_files_are_created_private_whatever_the_umask(self) -> None:
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        database_checks.create_private(self.db)
        self.assertEqual(mode(self.db), 0o600)
        with database_checks.private_files():
            connection = sqlite3.connect(self.db, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE t (x)")
        self.addCleanup(connection.close)
        self.assertEqual(os.umask(0o022), 0o022)  # restored
        for name in ("test.sqlite3", "test.sqlite3-wal", "test.sqlite3-shm"):
            self.assertEqual(mode(self.dir / name), 0o600, name)


class TTPStoreTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        init_ca(self.data_dir)
        self.db = TTPPaths(self.data_dir).db

    def test_truncated_with_a_leftover_wal_is_refused_at_open(self) -> None:
        damage_leaving_wal(self.db)
        with self.assertRaises(StoreError) as caught:
            Store.open(self.db)
        self.assertIn(f"database {self.db} is damaged", str(caught.exception))
        self.assertIn("restore it", str(caught.exception))

    def test_unwritable_directory_is_not_called_another_schema(self) -> None:
        make_unwritable(self, self.data_dir)
        with self.assertRaises(StoreError) as caught:
            Store.open(self.db)
        self.assertIn("cannot be written", str(caught.exception))
        self.assertNotIn("not a TTP database", str(caught.exception))

    def test_another_file_is_damaged(self) -> None:
        self.db.write_bytes(b"\0" * 8192)
        with self.assertRaises(StoreError) as caught:
            Store.open(self.db)
        self.assertIn("is damaged", str(caught.exception))

    def test_database_files_are_private(self) -> None:
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        store = Store.open(self.db)
        self.addCleanup(store.close)
        for suffix in ("", "-wal", "-shm"):
            self.assertEqual(mode(self.db.with_name(self.db.name + suffix)), 0o600, suffix)


class IssuerTests(unittest.SynchronousTestCase):
    def test_a_locked_database_is_called_busy_and_its_text_stays_in_the_log(self) -> None:
        ttp = TTPFixture(Path(self.mktemp()))
        self.addCleanup(ttp.close)
        token = ttp.token()
        holder = sqlite3.connect(TTPPaths(ttp.data_dir).db, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than we wait
        ttp.store._db.execute("PRAGMA busy_timeout = 0")
        request = enroll_request(token, "bank.example", Role.SERVER, ec.generate_private_key(ec.SECP256R1()))
        outcome = ttp.issuer.handle(wire.encode(request))
        self.assertEqual(outcome.refusal, Refusal.internal_error, outcome)
        assert isinstance(outcome.reply, wire.Refused)
        self.assertEqual(outcome.reply.detail, "the TTP's database is locked by another process; try again")
        self.assertIn("database is locked", outcome.summary)


#: What the daemons log once they serve: seeing it means the refusal did not happen.
STARTED = re.compile(rb"tlsotp-ttp serving on|tlsotp-server \S+ listening on")


class OutputOf(ProcessProtocol):
    """A subprocess's whole output and exit status; ``started`` fires if it logs that it serves."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int | None] = Deferred()
        self.started = False

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.started and STARTED.search(self.output):
            self.started = True
            try:
                self.transport.signalProcess("KILL")  # type: ignore[call-arg, union-attr]
            except ProcessExitedAlready:
                pass

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


async def run_process(testcase: unittest.TestCase, argv: list[str], cwd: Path) -> tuple[int | None, str]:
    """Run ``argv`` with the reactor running (an in-process TTP may be serving it); a daemon
    that starts serving instead of refusing is killed at once and fails the test."""
    process = OutputOf()
    transport = reactor.spawnProcess(process, argv[0], argv, env=subprocess_env(), path=str(cwd))  # type: ignore[arg-type, misc]
    timed_out = []

    def kill() -> None:
        timed_out.append(True)
        try:
            transport.signalProcess("KILL")  # type: ignore[call-arg]
        except ProcessExitedAlready:
            pass

    timer = reactor.callLater(WAIT_SECONDS, kill)  # type: ignore[arg-type]
    code = await process.ended
    if timer.active():  # type: ignore[misc]
        timer.cancel()  # type: ignore[misc]
    output = process.output.decode(errors="replace")
    if process.started:
        testcase.fail(f"it started serving instead of refusing to start:\n{output}")
    if timed_out:
        testcase.fail(f"still running after {WAIT_SECONDS} s (it should have refused to start):\n{output}")
    return code, output


class FullDiskTests(unittest.TestCase):
    """A really full disk (a small tmpfs filled to its last block) is a full disk, not busy."""

    def test_check_on_a_full_disk(self) -> None:
        disk = tiny_disk(self)
        db = disk / "test.sqlite3"
        connection = sqlite3.connect(db, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE t (x)")
        connection.close()
        fill(disk)
        with self.assertRaises(DatabaseUnusable) as caught:
            check_database(db)
        self.assertEqual(caught.exception.cause, Cause.disk_full, str(caught.exception))
        self.assertIn("free disk space", str(caught.exception))

    async def test_the_bank_server_names_a_full_disk_while_serving(self) -> None:
        disk = tiny_disk(self)
        authority = OTPAuthority(reactor, disk, OTPPolicy())  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(authority.close)
        await authority.open()
        await authority.issue("alice.example", "pay 1")
        fill(disk)
        with self.assertRaises(DatabaseUnusable) as caught:
            for attempt in range(100):  # a commit that still fits in the -wal's last block may pass
                await authority.issue("alice.example", f"pay {attempt} " + "x" * 150)
        self.assertEqual(caught.exception.cause, Cause.disk_full, str(caught.exception))
        self.assertIn(f"database {disk / DATABASE_FILE} cannot grow: the disk is full", str(caught.exception))

    async def test_operator_command_on_a_full_disk(self) -> None:
        disk = tiny_disk(self)
        data_dir = disk / "ttp"
        init_ca(data_dir)
        fill(disk)
        code, output = await run_process(
            self, [*TLSOTP, "ttp", "token", "--data-dir", str(data_dir), "--name", "bank.example", "--role", "server"],
            Path.cwd(),
        )
        self.assertEqual(code, 1, output)
        self.assertEqual(len(output.splitlines()), 1, output)
        self.assertIn(f"database {data_dir / 'ttp.sqlite3'} cannot grow: the disk is full", output)
        self.assertIn("free disk space", output)
        self.assertNotIn("busy", output)


class DaemonRefusalTests(unittest.TestCase):
    """The real daemons and commands: one line naming the file and what to do, exit non-zero."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()

    def assertOneLineRefusal(self, code: int | None, output: str, *expected: str) -> None:
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if all(text in line for text in expected)]
        self.assertEqual(len(lines), 1, output)

    def ttp_data_dir(self) -> Path:
        data_dir = self.base / "ttp"
        init_ca(data_dir)
        return data_dir

    async def test_ttp_daemon_refuses_a_truncated_database_with_a_leftover_wal(self) -> None:
        data_dir = self.ttp_data_dir()
        db = TTPPaths(data_dir).db
        damage_leaving_wal(db)
        code, output = await run_process(self, [
            *TWISTD, "-n", "--pidfile", str(self.base / "ttp.pid"), "--logfile", "-",
            "tlsotp-ttp", "--data-dir", str(data_dir), "--listen", "tcp:0:interface=127.0.0.1",
        ], self.base)
        self.assertOneLineRefusal(code, output, "tlsotp-ttp:", f"database {db} is damaged", "restore it")
        self.assertEqual(len(output.splitlines()), 1, output)
        self.assertNotIn("serving on", output)

    async def test_ttp_daemon_refuses_an_unwritable_data_dir(self) -> None:
        data_dir = self.ttp_data_dir()
        make_unwritable(self, data_dir)
        code, output = await run_process(self, [
            *TWISTD, "-n", "--pidfile", "", "--logfile", "-",
            "tlsotp-ttp", "--data-dir", str(data_dir), "--listen", "tcp:0:interface=127.0.0.1",
        ], self.base)
        self.assertOneLineRefusal(
            code, output, "tlsotp-ttp:", f"database {TTPPaths(data_dir).db} cannot be written", "writable"
        )
        self.assertNotIn("not a TTP database", output)

    async def test_operator_commands_refuse_a_truncated_database(self) -> None:
        data_dir = self.ttp_data_dir()
        db = TTPPaths(data_dir).db
        damage_leaving_wal(db)
        for argv in (
            ["ttp", "token", "--data-dir", str(data_dir), "--name", "bank.example", "--role", "server"],
            ["ttp", "revoke", "--data-dir", str(data_dir), "abcdef"],
            ["ttp", "list", "--data-dir", str(data_dir)],
        ):
            code, output = await run_process(self, [*TLSOTP, *argv], self.base)
            self.assertEqual(code, 1, output)
            self.assertEqual(len(output.splitlines()), 1, output)
            self.assertOneLineRefusal(code, output, f"tlsotp {argv[0]} {argv[1]}:", f"database {db} is damaged", "restore it")

    async def test_operator_commands_refuse_an_unwritable_data_dir(self) -> None:
        data_dir = self.ttp_data_dir()
        make_unwritable(self, data_dir)
        for argv in (
            ["ttp", "token", "--data-dir", str(data_dir), "--name", "bank.example", "--role", "server"],
            ["ttp", "list", "--data-dir", str(data_dir)],
        ):
            code, output = await run_process(self, [*TLSOTP, *argv], self.base)
            self.assertEqual(code, 1, output)
            self.assertOneLineRefusal(code, output, "cannot be written", "make the file and its directory writable")
            self.assertNotIn("not a TTP database", output)

    async def enrolled_bank(self) -> tuple[Path, list[str]]:
        """A bank data dir enrolled at a real in-process TTP (still serving its CRL), and the
        twistd argv that starts the server on it."""
        ttp_dir = self.ttp_data_dir()
        ttp = TTPService(reactor, init_ca_loaded(ttp_dir), ttp_dir, listen="tcp:0:interface=127.0.0.1")
        ttp.startService()
        self.addCleanup(ttp.stopService)
        options = server_daemon.Options()
        endpoint = f"tcp:host=127.0.0.1:port={port_of(ttp.port)}"
        fingerprint = ttp.ca.fingerprint
        bank = self.base / "bank"
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", str(bank), "--name", "bank.example", "--listen", "tcp:0:interface=127.0.0.1",
            "--ttp", endpoint, "--ca-fingerprint", fingerprint, "--token", mint(ttp_dir, "bank.example", Role.SERVER),
        ])
        server = build_service(server_daemon.settings_from(options), reactor)
        server.startService()
        await server.ready
        await server.stopService()
        argv = [
            *TWISTD, "-n", "--pidfile", "", "--logfile", "-", "tlsotp-server", "--data-dir", str(bank),
            "--name", "bank.example", "--listen", "tcp:0:interface=127.0.0.1", "--ttp", endpoint,
            "--ca-fingerprint", fingerprint,
        ]
        return bank, argv

    async def test_server_refuses_a_truncated_otp_database(self) -> None:
        bank, argv = await self.enrolled_bank()
        db = bank / DATABASE_FILE
        damage_leaving_wal(db)
        code, output = await run_process(self, argv, self.base)
        self.assertOneLineRefusal(code, output, "tlsotp-server:", f"database {db} is damaged", "restore it")
        self.assertNotIn("listening", output)

    async def test_server_refuses_an_unwritable_data_dir(self) -> None:
        bank, argv = await self.enrolled_bank()
        make_unwritable(self, bank)
        code, output = await run_process(self, argv, self.base)
        self.assertOneLineRefusal(
            code, output, "tlsotp-server:", f"database {bank / DATABASE_FILE} cannot be written", "writable"
        )
        self.assertNotIn("listening", output)


def init_ca_loaded(data_dir: Path) -> Any:
    from tlsotp.ttp.ca import load_ca

    return load_ca(data_dir)


class ServerServiceTests(unittest.TestCase):
    """In process: the service opens its database before it listens, and stops if it can't."""

    async def test_a_database_damaged_after_option_parsing_stops_the_start_before_listening(self) -> None:
        base = Path(self.mktemp()).resolve()
        ttp_dir = base / "ttp"
        ca = init_ca(ttp_dir)
        ttp = TTPService(reactor, ca, ttp_dir, listen="tcp:0:interface=127.0.0.1")
        ttp.startService()
        self.addCleanup(ttp.stopService)
        bank = base / "bank"
        options = server_daemon.Options()
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", str(bank), "--name", "bank.example", "--listen", "tcp:0:interface=127.0.0.1",
            "--ttp", f"tcp:host=127.0.0.1:port={port_of(ttp.port)}", "--ca-fingerprint", ca.fingerprint,
            "--token", mint(ttp_dir, "bank.example", Role.SERVER),
        ])
        # The data dir does not exist yet (first start enrolls); a bad file appears meanwhile.
        bank.mkdir(mode=0o700)
        (bank / DATABASE_FILE).write_bytes(b"not a database at all " * 300)
        server = build_service(server_daemon.settings_from(options), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        with self.assertRaises(DatabaseUnusable) as caught:
            await server.ready
        self.assertEqual(caught.exception.cause, Cause.damaged)
        self.assertIsNone(server.port)  # it never listened

    async def test_otp_database_files_are_private(self) -> None:
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        data_dir = Path(self.mktemp())
        data_dir.mkdir(mode=0o700)
        authority = OTPAuthority(reactor, data_dir, OTPPolicy())  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(authority.close)
        await authority.open()
        await authority.issue("alice.example", "pay 1")
        for name in (DATABASE_FILE, DATABASE_FILE + "-wal", DATABASE_FILE + "-shm"):
            self.assertEqual(mode(data_dir / name), 0o600, name)


class TTPServiceTests(unittest.TestCase):
    def test_start_refuses_a_database_damaged_since_the_options_were_checked(self) -> None:
        data_dir = Path(self.mktemp())
        ca = init_ca(data_dir)
        service = TTPService(reactor, ca, data_dir, listen="tcp:0:interface=127.0.0.1")
        damage_leaving_wal(TTPPaths(data_dir).db)
        self.addCleanup(service.stopService)
        with self.assertRaises(SystemExit) as caught:
            service.startService()
        self.assertEqual(caught.exception.code, 1)
        message = str(caught.exception)  # StartupFailed: twistd reports it, see tlsotp.services.shutdown
        self.assertTrue(message.startswith(f"tlsotp-ttp: database {TTPPaths(data_dir).db} is damaged"), message)
        self.assertNotIn("\n", message)
