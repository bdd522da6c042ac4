"""Is a SQLite database file fit to use? Intact, writable, and private; else one line saying why.

A daemon that starts on a damaged or unwritable database fails later, on a peer's request,
where the operator sees only ``internal_error`` (or, at the TTP, issues a certificate it then
cannot revoke). So each daemon and each operator command checks its database as it opens it:
``check_directory`` first (the directory must take new files: SQLite creates ``-wal``,
``-shm`` and ``-journal`` files next to the database), then on the fresh connection
``check_connection``, whose first read lets SQLite recover the write-ahead log, then
``PRAGMA quick_check`` (which must say exactly ``ok``) and a real write transaction that
commits. Any failure becomes one ``DatabaseUnusable`` whose message names the file, the real
cause and what to do about it.

Sans-I/O apart from the file system: no Twisted here. The callers run it where they open the
database: the TTP's ``Store`` on every open, the bank server's worker before it listens.
"""

from __future__ import annotations

import enum
import errno
import os
import sqlite3
import tempfile
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: The mode of a database file and of the ``-wal``/``-shm``/``-journal`` files beside it: they
#: hold what the database holds (token MAC keys, OTP MACs), so only the owner reads them.
PRIVATE_MODE = 0o600
PRIVATE_UMASK = 0o077


class Cause(enum.Enum):
    damaged = "is damaged"
    read_only = "cannot be written"
    disk_full = "cannot grow: the disk is full"
    busy = "is locked by another process"
    io_error = "cannot be read or written (I/O error)"
    not_a_file = "is not a regular file"


ADVICE = {
    Cause.damaged: "restore it (with its -wal file, if any) from a backup",
    Cause.read_only: "make the file and its directory writable by this daemon's user",
    Cause.disk_full: "free disk space",
    Cause.busy: "stop the other process holding it, or try again",
    Cause.io_error: "check the disk; restore the database from a backup if it is damaged",
    Cause.not_a_file: "move it aside and restore the database from a backup",
}

_SQLITE_CAUSES = {
    sqlite3.SQLITE_CORRUPT: Cause.damaged,
    sqlite3.SQLITE_NOTADB: Cause.damaged,
    sqlite3.SQLITE_FORMAT: Cause.damaged,
    sqlite3.SQLITE_READONLY: Cause.read_only,
    sqlite3.SQLITE_CANTOPEN: Cause.read_only,
    sqlite3.SQLITE_PERM: Cause.read_only,
    sqlite3.SQLITE_AUTH: Cause.read_only,
    sqlite3.SQLITE_FULL: Cause.disk_full,
    sqlite3.SQLITE_BUSY: Cause.busy,
    sqlite3.SQLITE_LOCKED: Cause.busy,
    sqlite3.SQLITE_IOERR: Cause.io_error,
    sqlite3.SQLITE_PROTOCOL: Cause.busy,
}

_ERRNO_CAUSES = {
    errno.EACCES: Cause.read_only,
    errno.EPERM: Cause.read_only,
    errno.EROFS: Cause.read_only,
    errno.ENOSPC: Cause.disk_full,
    errno.EDQUOT: Cause.disk_full,
    errno.EIO: Cause.io_error,
}


class DatabaseUnusable(Exception):
    """The database at ``path`` cannot be used; ``str()`` is one line: file, cause, what to do."""

    def __init__(self, path: Path, cause: Cause, detail: str = "") -> None:
        self.path = Path(path)
        self.cause = cause
        self.detail = " ".join(detail.split())  # one line, whatever SQLite or the OS said
        because = f" ({self.detail})" if self.detail else ""
        super().__init__(f"database {self.path} {cause.value}{because}: {ADVICE[cause]}")


# Growing the -shm file failed: on a full disk (tmpfs or not) that is what SQLite reports.
_SQLITE_IOERR_SHMSIZE = getattr(sqlite3, "SQLITE_IOERR_SHMSIZE", 4874)

#: Below this many free bytes, an I/O error in the database's directory is taken for a full disk.
NEARLY_FULL_BYTES = 64 * 1024


def sqlite_cause(error: sqlite3.Error) -> Cause | None:
    """The real cause behind a sqlite3 error, from its result code; None if unknown."""
    code = getattr(error, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return None
    if code == _SQLITE_IOERR_SHMSIZE:
        return Cause.disk_full
    return _SQLITE_CAUSES.get(code & 0xFF)


def _disk_is_full(directory: Path) -> bool:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES


def os_cause(error: OSError) -> Cause:
    return _ERRNO_CAUSES.get(error.errno or 0, Cause.io_error)


def unusable(path: Path, error: sqlite3.Error | OSError) -> DatabaseUnusable | None:
    """The ``DatabaseUnusable`` that ``error`` (met while using ``path``) means, or None when the
    error says nothing about the file (a bad SQL statement, a missing table)."""
    if isinstance(error, OSError):
        cause = os_cause(error)
        detail = error.strerror or str(error)
    else:
        found = sqlite_cause(error)
        if found is None:
            return None
        cause, detail = found, str(error)
    if cause is Cause.io_error and _disk_is_full(Path(path).parent):
        cause = Cause.disk_full  # SQLite says 'disk I/O error' for some writes to a full disk
    return DatabaseUnusable(path, cause, detail)


def describe(error: sqlite3.Error, path: Path | None = None) -> str:
    """What went wrong, as the end of 'the database ...', for a refusal sent while serving; the
    cause only (busy, disk full, damaged...), never SQLite's own text, which goes to the log.
    With the database's ``path``, an I/O error on a full disk is told as a full disk."""
    cause = sqlite_cause(error)
    if cause is Cause.io_error and path is not None and _disk_is_full(Path(path).parent):
        cause = Cause.disk_full
    if cause is None:
        return "failed"
    if cause is Cause.busy:
        return f"{cause.value}; try again"
    return str(cause.value)


@contextmanager
def private_files() -> Iterator[None]:
    """Files created meanwhile get no group or other permission bits (process-wide umask)."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def create_private(path: Path) -> None:
    """Create ``path`` empty with ``PRIVATE_MODE`` unless it exists, so that SQLite (which gives
    its ``-wal`` and ``-shm`` files the database's mode) never makes a readable one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise DatabaseUnusable(path, os_cause(exc), exc.strerror or str(exc)) from None
    os.close(fd)


def check_directory(path: Path) -> None:
    """The directory of ``path`` must take new files: SQLite makes its journal files there."""
    path = Path(path)
    directory = path.parent
    if path.exists() and not path.is_file():
        raise DatabaseUnusable(path, Cause.not_a_file)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseUnusable(path, Cause.read_only, f"directory {directory} is not writable")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise DatabaseUnusable(path, Cause.read_only, "the file is not readable and writable")
    # Root passes os.access whatever the bits say: only a real file creation tells.
    try:
        fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=directory)
    except OSError as exc:
        raise DatabaseUnusable(path, os_cause(exc), f"cannot create a file in {directory}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(scratch)


def check_connection(connection: sqlite3.Connection, path: Path) -> None:
    """Integrity (after WAL recovery) and a committed write, on ``connection`` (fresh, not
    inside a transaction) to the database at ``path``. Call ``check_directory`` before
    connecting: in WAL mode the first statement already needs to create the ``-shm`` file."""
    try:
        rows = connection.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            first = str(rows[0][0]).splitlines()[-1] if rows else "no answer"
            raise DatabaseUnusable(path, Cause.damaged, f"quick_check: {first}")
        _write_header(connection)
    except sqlite3.Error as exc:
        raise unusable(path, exc) or DatabaseUnusable(path, Cause.damaged, str(exc)) from None


def _write_header(connection: sqlite3.Connection) -> None:
    # A real write: rewrite the header's user_version with its own value, and commit.
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(f"PRAGMA user_version = {int(version)}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def check_writable(connection: sqlite3.Connection, path: Path) -> None:
    """One committed write on ``connection`` (not inside a transaction), as a health probe while
    serving: cheaper than ``check_connection`` (no integrity scan); ``DatabaseUnusable`` if it fails."""
    try:
        _write_header(connection)
    except sqlite3.Error as exc:
        raise unusable(path, exc) or DatabaseUnusable(path, Cause.damaged, str(exc)) from None


def check_database(path: Path) -> None:
    """Check the database at ``path`` if it exists (else only its directory), then close it."""
    path = Path(path)
    check_directory(path)
    if not path.exists():
        return
    with private_files():  # WAL recovery may create the -shm file
        try:
            uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=rw"  # never create it
            connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10)
        except sqlite3.Error as exc:
            raise unusable(path, exc) or DatabaseUnusable(path, Cause.damaged, str(exc)) from None
        try:
            check_connection(connection, path)
        finally:
            connection.close()
