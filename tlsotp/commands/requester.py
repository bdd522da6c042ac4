"""``tlsotp enroll``, ``tlsotp renew``, ``tlsotp crl``: a party's side of the TTP, by hand."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from twisted.python import usage

from tlsotp.commands.common import Command, CommandFailed, usage_errors, write_json
from tlsotp.commands.option_types import seconds
from tlsotp.commands.ttp_admin import parse_role, utc_text
from tlsotp.pki.credentials import CA_FILE, NEXT_KEY_FILE, RootPin
from tlsotp.pki.keys import KEY_TYPE_NAMES, KeyType, parse_key_type
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.pem import PEMError, write_crl
from tlsotp.services.enrollment import DEFAULT_TIMEOUT, TTPUnavailable, crl_number, enroll, fetch_crl, renew
from tlsotp.ttp.store import serial_text

DEFAULT_TTP = "tcp:host=127.0.0.1:port=7000"

_TTP_PARAMETERS: list[list[Any]] = [
    ["ttp", None, DEFAULT_TTP, "Endpoint string of the TTP."],
    ["timeout", None, DEFAULT_TIMEOUT, "Time to wait for the TTP: 30s, 2m (a bare number is seconds).", seconds],
]
_PIN_PARAMETERS: list[list[Any]] = [
    ["ca-fingerprint", None, None, "Pin the TTP root by fingerprint, sha256:HEX."],
    ["ca-cert", None, None, "Pin the TTP root by a PEM file holding it."],
]


def pin_from_options(options: usage.Options, *, required: bool) -> RootPin | None:
    """The root pinned by --ca-fingerprint or --ca-cert (at most one), for any command or daemon."""
    if options["ca-fingerprint"] and options["ca-cert"]:
        raise usage.UsageError("give --ca-fingerprint or --ca-cert, not both")
    try:
        if options["ca-fingerprint"]:
            return RootPin.from_fingerprint(options["ca-fingerprint"])
        if options["ca-cert"]:
            return RootPin.from_ca_file(Path(options["ca-cert"]))
    except (ValueError, OSError) as exc:
        raise usage.UsageError(str(exc)) from None
    if required:
        raise usage.UsageError("pin the TTP root: give --ca-fingerprint sha256:HEX or --ca-cert FILE")
    return None


#: How much of a token file is read: a token is about 60 characters.
TOKEN_FILE_LIMIT = 4096


def read_token_file(name: str, stdin: TextIO | None = None) -> str:
    """The token in file ``name`` (``-``: standard input), stripped; a ``usage.UsageError`` naming
    the file when it cannot be read or holds no token. A file keeps the token out of ``ps``."""
    where = "standard input" if name == "-" else name
    try:
        if name == "-":
            text = (stdin or sys.stdin).read(TOKEN_FILE_LIMIT + 1)
        else:
            with open(name, encoding="utf-8") as file:
                text = file.read(TOKEN_FILE_LIMIT + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise usage.UsageError(f"cannot read --token-file {where}: {reason}") from None
    if len(text) > TOKEN_FILE_LIMIT:
        raise usage.UsageError(f"--token-file {where} is too long for a token")
    token = text.strip()
    if not token:
        raise usage.UsageError(f"--token-file {where} is empty: write the token from 'tlsotp ttp token' into it")
    return token


def token_from_options(options: usage.Options, *, required: bool) -> str | None:
    """The token given by --token or --token-file (at most one; ``-`` is standard input)."""
    if options["token"] and options["token-file"]:
        raise usage.UsageError("give --token or --token-file, not both")
    if options["token-file"]:
        return read_token_file(options["token-file"])
    if required and not options["token"]:
        raise usage.UsageError("give the token: --token-file FILE (or - for standard input), or --token T")
    return options["token"] or None


def _retry_hint(exc: TTPUnavailable, data_dir: Path) -> CommandFailed:
    """No reply: the TTP may have issued the certificate. Say that re-running is safe."""
    if (data_dir / NEXT_KEY_FILE).exists():
        return CommandFailed(
            f"{exc}; if the request got through, the TTP issued a certificate for the key kept in "
            f"{data_dir / NEXT_KEY_FILE}: run the same command again to get it"
        )
    return CommandFailed(str(exc))


class EnrollOptions(Command):
    """Enroll with the TTP: make a key, prove the token, verify and store the certificate."""

    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "Directory for key.pem, cert.pem and ca.pem (created if missing)."],
        *_TTP_PARAMETERS,
        *_PIN_PARAMETERS,
        ["token-file", None, None, "Read the token from 'tlsotp ttp token' from this file (- for standard input)."],
        ["token", None, None, "The token itself (visible in ps: prefer --token-file)."],
        ["name", None, None, "The name the token was minted for."],
        ["role", None, None, "server or client."],
        ["key-type", None, KeyType.EC_P256.value, f"Key type: {', '.join(KEY_TYPE_NAMES)}."],
    ]

    def postOptions(self) -> None:
        if not self["data-dir"] or not self["name"] or not self["role"]:
            raise usage.UsageError("--data-dir, --name and --role are required")
        self["data-dir"] = Path(self["data-dir"])
        self["pin"] = pin_from_options(self, required=True)
        self["token"] = token_from_options(self, required=True)
        try:
            self["name"] = check_dns_name(self["name"])
            self["role"] = parse_role(self["role"])
            self["key-type"] = parse_key_type(self["key-type"])
        except (ValueError, OSError) as exc:
            raise usage.UsageError(str(exc)) from None

    async def execute(self, reactor: Any, out: TextIO) -> int:
        try:
            credentials = await enroll(
                reactor,
                self["ttp"],
                data_dir=self["data-dir"],
                pin=self["pin"],
                token=self["token"],
                name=self["name"],
                role=self["role"],
                key_type=self["key-type"],
                timeout=self["timeout"],
            )
        except TTPUnavailable as exc:
            raise _retry_hint(exc, self["data-dir"]) from None
        leaf = credentials.leaf
        out.write(
            f"enrolled {self['name']} as {self['role'].value}: serial {serial_text(leaf.serial_number)}, "
            f"valid until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, files in {self['data-dir']}\n"
        )
        return 0


class RenewOptions(Command):
    """Renew this party's certificate, proving possession of its current key (no token)."""

    optFlags = [["new-key", None, "Make a new key instead of certifying the current one again."]]
    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "The party's data dir (key.pem, cert.pem, ca.pem)."],
        *_TTP_PARAMETERS,
        ["key-type", None, None, f"Type of the new key (with --new-key): {', '.join(KEY_TYPE_NAMES)}."],
    ]

    def postOptions(self) -> None:
        if not self["data-dir"]:
            raise usage.UsageError("--data-dir is required")
        self["data-dir"] = Path(self["data-dir"])
        if self["key-type"]:
            if not self["new-key"]:
                raise usage.UsageError("--key-type needs --new-key")
            with usage_errors():
                self["key-type"] = parse_key_type(self["key-type"])

    async def execute(self, reactor: Any, out: TextIO) -> int:
        try:
            credentials = await renew(
                reactor,
                self["ttp"],
                data_dir=self["data-dir"],
                new_key=bool(self["new-key"]),
                key_type=self["key-type"] or None,
                timeout=self["timeout"],
            )
        except TTPUnavailable as exc:
            raise _retry_hint(exc, self["data-dir"]) from None
        leaf = credentials.leaf
        out.write(
            f"renewed: serial {serial_text(leaf.serial_number)}, valid until "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC{', new key' if self['new-key'] else ''}\n"
        )
        return 0


class CRLOptions(Command):
    """Fetch the TTP's CRL, verify it against the pinned root, print the revoked serials."""

    optFlags: list[list[Any]] = [["json", None, "Print one JSON document instead of the summary (for scripts)."]]
    optParameters: list[list[Any]] = [
        *_TTP_PARAMETERS,
        *_PIN_PARAMETERS,
        ["data-dir", "d", None, "A party's data dir: pin its ca.pem (unless pinned otherwise), store crl.pem."],
        ["out", "o", None, "Also write the verified CRL (PEM) to this file."],
    ]

    def postOptions(self) -> None:
        self["data-dir"] = Path(self["data-dir"]) if self["data-dir"] else None
        self["pin"] = pin_from_options(self, required=self["data-dir"] is None)
        if self["pin"] is None:
            try:
                self["pin"] = RootPin.from_ca_file(self["data-dir"] / CA_FILE)
            except PEMError as exc:
                raise usage.UsageError(f"{exc}; or pin the root with --ca-fingerprint / --ca-cert") from None

    async def execute(self, reactor: Any, out: TextIO) -> int:
        crl = await fetch_crl(reactor, self["ttp"], pin=self["pin"], data_dir=self["data-dir"], timeout=self["timeout"])
        if self["out"]:
            try:
                write_crl(Path(self["out"]), crl)
            except OSError as exc:
                raise CommandFailed(f"cannot write {self['out']}: {exc.strerror or exc}") from None
        if self["json"]:
            write_json(out, {"crl": crl_json(crl)})
            return 0
        next_update = crl.next_update_utc
        out.write(
            f"# CRL number {crl_number(crl)}, next update "
            f"{next_update:%Y-%m-%d %H:%M} UTC, {len(crl)} revoked\n"
            if next_update
            else f"# CRL number {crl_number(crl)}, {len(crl)} revoked\n"
        )
        for entry in crl:
            out.write(f"{serial_text(entry.serial_number)}  {entry.revocation_date_utc:%Y-%m-%d %H:%M}  {revocation_reason(entry)}\n")
        return 0


def revocation_reason(entry: x509.RevokedCertificate) -> str:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
    except x509.ExtensionNotFound:
        return "unspecified"


def crl_json(crl: x509.CertificateRevocationList) -> dict[str, Any]:
    """``tlsotp crl --json``: the verified CRL's number, times and entries (serials hex, as
    ``ttp list`` shows them; times ISO 8601 UTC)."""
    return {
        "number": crl_number(crl),
        "issuer": crl.issuer.rfc4514_string(),
        "last_update": utc_text(crl.last_update_utc),
        "next_update": utc_text(crl.next_update_utc),
        "revoked": [
            {"serial": serial_text(entry.serial_number), "revoked_at": utc_text(entry.revocation_date_utc),
             "reason": revocation_reason(entry)}
            for entry in crl
        ],
    }
