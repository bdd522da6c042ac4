"""Where a store lives: the data dir's SQLite file (the default) or a PostgreSQL database.

``--database URL`` names a PostgreSQL database (``postgresql://user@host:port/dbname``, or with
``?host=/socket/dir``). A password never goes on the command line (it would show in ``ps``):
one in the URL is refused, and it comes from ``--database-password-file`` or from libpq's own
``PGPASSFILE`` / ``~/.pgpass``. ``describe()`` is what logs show: the URL, which holds no secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

__all__ = ["DatabaseURLError", "PostgresTarget", "parse_database_url"]

SCHEMES = ("postgresql", "postgres")
MAX_URL = 2048
MAX_PASSWORD = 1024


class DatabaseURLError(ValueError):
    """A ``--database`` value or password file that cannot be used (the message says why)."""


@dataclass(frozen=True)
class PostgresTarget:
    """A PostgreSQL database to connect to; ``password`` only ever comes from a file."""

    url: str
    #: Never in a repr: settings holding a target may end up in a log line or a traceback.
    password: str | None = field(default=None, repr=False)

    def conninfo(self) -> str:
        """The libpq connection string: the URL, and the password when one was read (psycopg,
        from the ``postgresql`` extra, merges and quotes them)."""
        if self.password is None:
            return self.url
        import psycopg.conninfo

        return psycopg.conninfo.make_conninfo(self.url, password=self.password)

    def describe(self) -> str:
        return self.url


def parse_database_url(url: str, password_file: Path | None = None) -> PostgresTarget:
    """Check a ``--database`` URL and read the password file; raises ``DatabaseURLError``."""
    if len(url) > MAX_URL:
        raise DatabaseURLError(f"--database is longer than {MAX_URL} characters")
    if re.search(r"[\x00-\x1f\x7f]", url):
        raise DatabaseURLError("--database holds a control character")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise DatabaseURLError(f"--database must be a postgresql:// URL, not {url.split(':', 1)[0]!r}")
    if parts.password is not None or "password" in {key.lower() for key in parse_qs(parts.query)}:
        raise DatabaseURLError(
            "--database must not hold a password (it would show in ps): "
            "use --database-password-file FILE, or PGPASSFILE / ~/.pgpass"
        )
    password = None
    if password_file is not None:
        try:
            raw = password_file.read_bytes()
        except OSError as exc:
            raise DatabaseURLError(f"cannot read the database password file {password_file}: {exc.strerror}") from None
        if len(raw) > MAX_PASSWORD:
            raise DatabaseURLError(f"the database password file {password_file} is longer than {MAX_PASSWORD} bytes")
        try:
            password = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise DatabaseURLError(f"the database password file {password_file} is not UTF-8") from None
        if not password:
            raise DatabaseURLError(f"the database password file {password_file} is empty")
    return PostgresTarget(url, password)
