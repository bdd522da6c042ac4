"""``tlsotp ttp ...``: the operator's commands on a TTP data dir.

``init`` makes the CA; ``token`` (also ``token --withdraw``), ``tokens``, ``withdraw``, ``revoke``
and ``list`` work on the database and need no CA key, so they run while the daemon runs (SQLite
serialises the writers). With ``--database postgresql://...`` every command works on that
PostgreSQL database instead of the data dir's SQLite file (the data dir still holds the CA's
root, which the database must belong to), under the same write lock as the TTPs on it
(docs/postgresql_ttp.rst). Machine-usable output
(the fingerprint, the token) goes alone to stdout; notes for the human go to stderr.
"""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path
from typing import Any, Callable, TextIO, TypeVar

from cryptography import x509
from twisted.python import usage

from tlsotp.commands.common import Command, CommandFailed, CommandGroup, Subcommand, usage_errors, write_json
from tlsotp.commands.option_types import duration, whole_days
from tlsotp.database_url import DatabaseURLError, PostgresTarget, parse_database_url
from tlsotp.pki.keys import KEY_TYPE_NAMES, KeyType, parse_key_type
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import utcnow
from tlsotp.ttp.ca import DEFAULT_ROOT_DAYS, DEFAULT_SUBJECT, CAError, init_ca, open_store, read_passphrase
from tlsotp.ttp.store import (
    AlreadyRevoked,
    CertificateRecord,
    Store,
    StoreError,
    StoreUnavailable,
    TokenRecord,
    TokenUnavailable,
    UnknownSerial,
    parse_serial,
    serial_text,
)

T = TypeVar("T")

DEFAULT_TTL = "1h"
MAX_TTL = datetime.timedelta(days=30)

# Reasons an operator may give; certificate_hold / remove_from_crl imply un-revoking, which the TTP does not do.
REASONS = {
    flag.name.replace("_", "-"): flag
    for flag in x509.ReasonFlags
    if flag not in (x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl)
}


def parse_duration(text: str) -> datetime.timedelta:
    """A token's time to live: a duration (see ``tlsotp.commands.option_types.duration``) of at most 30 days."""
    value = duration(text)
    if value > MAX_TTL:
        raise ValueError(f"a token lives more than 0 s and at most {MAX_TTL.days} days")
    return value


def parse_role(text: str) -> Role:
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise ValueError(f"role must be 'server' or 'client', not {text!r}") from None


def parse_reason(text: str) -> x509.ReasonFlags:
    key = text.strip().lower().replace("_", "-")
    if key not in REASONS:
        raise ValueError(f"unknown reason {text!r}; choose one of {', '.join(sorted(REASONS))}")
    return REASONS[key]


#: Every command that opens the store takes these (the daemon has the same two).
DATABASE_OPTIONS: list[list[Any]] = [
    ["database", None, None,
     "Work on this PostgreSQL database (postgresql://user@host:port/dbname, no password in it) instead of "
     "the data dir's SQLite file."],
    ["database-password-file", None, None, "File holding the --database password (else PGPASSFILE or ~/.pgpass)."],
]


class _DataDirOptions(Command):
    database: PostgresTarget | None = None

    def postOptions(self) -> None:
        if not self["data-dir"]:
            raise usage.UsageError("--data-dir is required")
        self["data-dir"] = Path(self["data-dir"])
        url, password_file = self.get("database"), self.get("database-password-file")
        if url is None and password_file is not None:
            raise usage.UsageError("--database-password-file needs --database")
        if url is not None:
            try:
                self.database = parse_database_url(url, Path(password_file) if password_file else None)
            except DatabaseURLError as exc:
                raise usage.UsageError(str(exc)) from None

    def _store(self) -> Store:
        try:
            return open_store(self["data-dir"], self.database)
        except (CAError, StoreError) as exc:
            raise CommandFailed(str(exc)) from None

    def _run(self, work: Callable[[Store], T]) -> T:
        """``work(store)`` on a store opened for it and closed after; a database that went away
        meanwhile is one line and a failed command."""
        store = self._store()
        try:
            return work(store)
        except StoreUnavailable as exc:
            raise CommandFailed(f"the TTP's database {store.where} is unavailable: {exc.detail}") from None
        finally:
            store.close()


class InitOptions(_DataDirOptions):
    """Create the CA: key (0600; encrypted with a passphrase file) and self-signed root."""

    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "Directory for the TTP's key, root and database (created if missing)."],
        ["key-type", None, KeyType.EC_P256.value, f"CA key type: {', '.join(KEY_TYPE_NAMES)}."],
        ["subject", None, DEFAULT_SUBJECT, "Common name of the root certificate."],
        ["days", None, DEFAULT_ROOT_DAYS, "Lifetime of the root certificate: 3650d (a bare number is days; whole days).", whole_days],
        ["passphrase-file", None, None, "Encrypt the CA key with the first line of this file."],
        ["database", None, None,
         "Keep the store in this PostgreSQL database (postgresql://..., no password in it; it must not belong "
         "to another CA) instead of a SQLite file in the data dir; the key and root stay in the data dir."],
        ["database-password-file", None, None, "File holding the --database password (else PGPASSFILE or ~/.pgpass)."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        with usage_errors():
            self["key-type"] = parse_key_type(self["key-type"])
        if self["days"] <= 0:
            raise usage.UsageError("--days must be positive")
        if not self["subject"].strip():
            raise usage.UsageError("--subject must not be empty")

    def execute(self, reactor: Any, out: TextIO) -> int:
        try:
            passphrase = read_passphrase(Path(self["passphrase-file"]) if self["passphrase-file"] else None)
            ca = init_ca(
                self["data-dir"], key_type=self["key-type"], subject=self["subject"], days=self["days"], passphrase=passphrase,
                database=self.database,
            )
        except (CAError, FileExistsError) as exc:
            raise CommandFailed(str(exc)) from None
        out.write(f"{ca.fingerprint}\n")
        return 0


class TokenOptions(_DataDirOptions):
    """Mint a one-time enrollment token for one name and one role (or, with --withdraw ID,
    withdraw one: the same as ``tlsotp ttp withdraw ID``)."""

    synopsis = "--data-dir DIR (--name NAME --role server|client [--ttl 1h] | --withdraw TOKEN-ID)"
    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "The TTP's data dir."],
        ["name", None, None, "The DNS name the token may enroll (required to mint)."],
        ["role", None, None, "server or client (required to mint)."],
        ["ttl", None, DEFAULT_TTL, "How long the token stays usable: 90s, 30m, 1h, 7d (at most 30d)."],
        ["withdraw", None, None, "Withdraw this unspent token (its id, or the whole token) instead of minting one."],
        *DATABASE_OPTIONS,
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if self["withdraw"] is not None:
            if self["name"] or self["role"]:
                raise usage.UsageError("--withdraw takes the token id alone, without --name or --role")
            self["token-id"] = parse_token_id(self["withdraw"])
            return
        if not self["name"] or not self["role"]:
            raise usage.UsageError("--name and --role are required (or --withdraw TOKEN-ID)")
        with usage_errors():
            self["name"] = check_dns_name(self["name"])
            self["role"] = parse_role(self["role"])
            self["ttl"] = parse_duration(self["ttl"])

    def execute(self, reactor: Any, out: TextIO) -> int:
        if self["withdraw"] is not None:
            return withdraw(self, self["token-id"], out)
        token = self._run(lambda store: store.mint_token(self["name"], self["role"], ttl=self["ttl"], now=utcnow()))
        out.write(f"{token}\n")
        return 0


class RevokeOptions(_DataDirOptions):
    """Revoke a certificate's whole enrollment by one serial; the daemon's next CRL lists it."""

    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "The TTP's data dir."],
        ["reason", None, "unspecified", f"Reason: {', '.join(sorted(REASONS))}."],
        *DATABASE_OPTIONS,
    ]

    synopsis = "--data-dir DIR SERIAL [--reason R]"

    def parseArgs(self, serial: str | None = None) -> None:
        if serial is None:
            raise usage.UsageError("give the serial to revoke (hex, as 'tlsotp ttp list' shows it)")
        with usage_errors():
            self["serial"] = parse_serial(serial)

    def postOptions(self) -> None:
        super().postOptions()
        with usage_errors():
            self["reason"] = parse_reason(self["reason"])

    def execute(self, reactor: Any, out: TextIO) -> int:
        try:
            revocation = self._run(lambda store: store.revoke(self["serial"], self["reason"], now=utcnow()))
        except (UnknownSerial, AlreadyRevoked) as exc:
            raise CommandFailed(str(exc)) from None
        record = revocation.record
        serials = ", ".join(serial_text(serial) for serial in revocation.serials) or "none (all expired or revoked)"
        lineage = (
            f"enrollment {revocation.enrollment} revoked, it can never be renewed again; "
            if revocation.enrollment is not None
            else ""
        )
        out.write(
            f"revoked {serial_text(record.serial)} ({record.name}, {record.role.value}): {self['reason'].name}; "
            f"{lineage}serials revoked: {serials}; the TTP serves them in its CRL from now on\n"
        )
        return 0


class ListOptions(_DataDirOptions):
    """List every certificate the TTP issued, with its enrollment (token id) and status."""

    optParameters: list[list[Any]] = [["data-dir", "d", None, "The TTP's data dir."], *DATABASE_OPTIONS]
    optFlags: list[list[Any]] = [["json", None, "Print one JSON document instead of a table (for scripts)."]]

    def execute(self, reactor: Any, out: TextIO) -> int:
        records = self._run(lambda store: store.list_certificates())
        now = utcnow()
        if self["json"]:
            write_json(out, {"certificates": [certificate_json(record, now) for record in records]})
            return 0
        rows = [("SERIAL", "NAME", "ROLE", "ENROLLMENT", "NOT BEFORE", "NOT AFTER", "STATUS")]
        for record in records:
            rows.append(
                (
                    serial_text(record.serial),
                    record.name,
                    record.role.value,
                    record.enrollment or "-",
                    f"{record.not_before:%Y-%m-%d %H:%M}",
                    f"{record.not_after:%Y-%m-%d %H:%M}",
                    record.status(now),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] + "\n")
        return 0


class TokensOptions(_DataDirOptions):
    """List the outstanding tokens (not spent, withdrawn or expired); never their secrets."""

    optParameters: list[list[Any]] = [["data-dir", "d", None, "The TTP's data dir."], *DATABASE_OPTIONS]
    optFlags: list[list[Any]] = [["json", None, "Print one JSON document instead of a table (for scripts)."]]

    def execute(self, reactor: Any, out: TextIO) -> int:
        records = self._run(lambda store: store.outstanding_tokens(utcnow()))
        if self["json"]:
            write_json(out, {"tokens": [token_json(record) for record in records]})
            return 0
        rows = [("TOKEN ID", "NAME", "ROLE", "CREATED", "EXPIRES")]
        for record in records:
            rows.append((
                record.token_id, record.name, record.role.value,
                f"{record.created_at:%Y-%m-%d %H:%M:%S}", f"{record.expires_at:%Y-%m-%d %H:%M:%S}",
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] + "\n")
        return 0


def token_json(record: TokenRecord) -> dict[str, Any]:
    """One row of ``ttp tokens --json``: the token's id and what it may enroll, never its MAC key."""
    return {
        "id": record.token_id,
        "name": record.name,
        "role": record.role.value,
        "created": utc_text(record.created_at),
        "expires": utc_text(record.expires_at),
    }


class WithdrawOptions(_DataDirOptions):
    """Withdraw an unspent token (a leaked one): the TTP refuses it from now on (token_withdrawn)."""

    optParameters: list[list[Any]] = [["data-dir", "d", None, "The TTP's data dir."], *DATABASE_OPTIONS]

    synopsis = "--data-dir DIR TOKEN-ID"

    def parseArgs(self, token: str | None = None) -> None:
        if token is None:
            raise usage.UsageError("give the id of the token to withdraw (as 'tlsotp ttp tokens' shows it)")
        self["token-id"] = parse_token_id(token)

    def execute(self, reactor: Any, out: TextIO) -> int:
        return withdraw(self, self["token-id"], out)


def parse_token_id(text: str) -> str:
    """The id of a token given by its id or whole (ID.SECRET), as a leaked one is usually found."""
    token_id = text.strip().split(".", 1)[0]
    if not token_id:
        raise usage.UsageError(f"{text!r} is not a token id")
    return token_id


def withdraw(command: _DataDirOptions, token_id: str, out: TextIO) -> int:
    """``ttp withdraw ID`` and ``ttp token --withdraw ID``: withdraw and say so."""
    try:
        record = command._run(lambda store: store.withdraw_token(token_id, now=utcnow()))
    except TokenUnavailable as exc:
        why = {
            "unknown": "no such token",
            "spent": "it was already used to enroll; revoke its certificate with 'tlsotp ttp revoke' instead",
            "withdrawn": "it was already withdrawn",
            "expired": "it has already expired, and enrolls nothing",
        }.get(exc.reason, exc.reason)
        raise CommandFailed(f"cannot withdraw token {token_id}: {why}") from None
    out.write(
        f"withdrew token {record.token_id} ({record.name}, {record.role.value}); "
        "the TTP refuses it from now on (token_withdrawn)\n"
    )
    return 0


class BackupOptions(_DataDirOptions):
    """Copy the TTP's database to a new file (0600) while the daemon runs (SQLite online backup)."""

    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "The TTP's data dir."],
        ["to", None, None, "The backup file to create (required; an existing file is never overwritten)."],
    ]

    synopsis = "--data-dir DIR --to FILE"

    def postOptions(self) -> None:
        super().postOptions()
        if not self["to"]:
            raise usage.UsageError("--to FILE is required: the backup file to create")
        self["to"] = Path(self["to"])

    def execute(self, reactor: Any, out: TextIO) -> int:
        target: Path = self["to"]
        if target.exists() or target.is_symlink():
            raise CommandFailed(f"{target} exists: a backup never overwrites a file; name a new one")
        store = self._store()
        if store.path is None:
            store.close()
            raise CommandFailed(
                f"the store is the PostgreSQL database {store.where}: back it up with pg_dump "
                "(docs/postgresql_ttp.rst); 'ttp backup' copies the data dir's SQLite file"
            )
        try:
            store.backup_to(target)
            certificates = len(store.list_certificates())
        except FileExistsError:
            raise CommandFailed(f"{target} exists: a backup never overwrites a file; name a new one") from None
        except (OSError, sqlite3.Error, StoreError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CommandFailed(f"cannot back up to {target}: {why}") from None
        finally:
            store.close()
        out.write(
            f"backed up {store.path} to {target} ({certificates} certificates; mode 0600): to restore, stop the TTP, "
            f"copy it in place as {store.path.name} and remove any {store.path.name}-wal and -shm left there\n"
        )
        return 0


def utc_text(moment: datetime.datetime | None) -> str | None:
    """A moment as ISO 8601 in UTC (``2026-12-01T22:00:00+00:00``), for JSON output."""
    return None if moment is None else moment.astimezone(datetime.timezone.utc).isoformat()


def certificate_json(record: CertificateRecord, now: datetime.datetime) -> dict[str, Any]:
    """One row of ``ttp list --json``: what the table shows, with full timestamps and the lineage."""
    return {
        "serial": serial_text(record.serial),
        "name": record.name,
        "role": record.role.value,
        "enrollment": record.enrollment,
        "not_before": utc_text(record.not_before),
        "not_after": utc_text(record.not_after),
        "issued_at": utc_text(record.issued_at),
        "renewed_from": None if record.renewed_from is None else serial_text(record.renewed_from),
        "superseded_by": None if record.superseded_by is None else serial_text(record.superseded_by),
        "revoked_at": utc_text(record.revoked_at),
        "revocation_reason": record.revocation_reason.name if record.revocation_reason else None,
        "status": record.status(now),
    }


class TTPOptions(CommandGroup):
    """Operate the TTP's data dir (times are UTC)."""

    commands = [
        Subcommand("init", None, "tlsotp.commands.ttp_admin:InitOptions", "Create the CA key and root; print its fingerprint."),
        Subcommand(
            "token", None, "tlsotp.commands.ttp_admin:TokenOptions", "Mint a one-time enrollment token (or --withdraw one)."
        ),
        Subcommand(
            "revoke", None, "tlsotp.commands.ttp_admin:RevokeOptions", "Revoke the whole enrollment of a certificate, by serial."
        ),
        Subcommand("list", None, "tlsotp.commands.ttp_admin:ListOptions", "List issued certificates and their status."),
        Subcommand("tokens", None, "tlsotp.commands.ttp_admin:TokensOptions", "List outstanding tokens (never their secrets)."),
        Subcommand("withdraw", None, "tlsotp.commands.ttp_admin:WithdrawOptions", "Withdraw an unspent token by its id."),
        Subcommand("backup", None, "tlsotp.commands.ttp_admin:BackupOptions", "Copy the TTP's database to a new file, live."),
    ]
