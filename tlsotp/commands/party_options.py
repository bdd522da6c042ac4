"""Options shared by the server and client daemons and the ``tlsotp client`` command.

Both parties identify themselves the same way: a data dir holding key and certificate, the
TTP's endpoint, the pinned root (fingerprint or file), and on first start a one-time token,
best from ``--token-file`` (``-``: standard input): a ``--token`` on the command line is
visible to every local user in ``ps``, so the daemons log a warning for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from tlsotp.commands.option_types import seconds
from tlsotp.commands.requester import pin_from_options, token_from_options
from tlsotp.handshake import DEFAULT_SUITES, Suite, parse_suite_list
from tlsotp.pki.keys import KEY_TYPE_NAMES, KeyType, parse_key_type

DEFAULT_TIMEOUT = 30.0

log = Logger()


class PartyOptions(usage.Options):
    """The common part; subclasses add their own parameters and call ``super().postOptions()``."""

    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "Directory for this party's key, certificate, root and CRL (created if missing)."],
        ["ttp", None, "tcp:host=127.0.0.1:port=7000", "Endpoint string of the TTP."],
        ["ca-fingerprint", None, None, "Pin the TTP root by its fingerprint, sha256:HEX."],
        ["ca-cert", None, None, "Pin the TTP root by a PEM file holding it."],
        ["token-file", None, None,
         "File holding the one-time enrollment token from the TTP operator (first start only; - for standard input)."],
        ["token", None, None, "The enrollment token itself (visible in ps: prefer --token-file)."],
        ["key-type", None, KeyType.EC_P256.value, f"Key type when enrolling: {', '.join(KEY_TYPE_NAMES)}."],
        ["suites", None, None, "Comma-separated cipher suites, most preferred first (default: all, strongest first)."],
        ["timeout", None, DEFAULT_TIMEOUT, "Time allowed for the handshake and for each later wait: 30s, 2m (a bare number is seconds).",
         seconds],
    ]

    def postOptions(self) -> None:
        if not self["data-dir"]:
            raise usage.UsageError("--data-dir is required")
        self["data-dir"] = Path(self["data-dir"])
        try:
            self["key-type"] = parse_key_type(self["key-type"])
            self["suites"] = parse_suite_list(self["suites"]) if self["suites"] else tuple(DEFAULT_SUITES)
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None
        self["pin"] = pin_from_options(self, required=False)
        #: Whether the token was on the command line, where ``ps`` shows it (the daemons warn).
        self["token-on-argv"] = bool(self["token"])
        self["token"] = token_from_options(self, required=False)

    @property
    def suites(self) -> tuple[Suite, ...]:
        return tuple(self["suites"])


def warn_token_on_argv(program: str, options: PartyOptions) -> None:
    """One log line when a daemon got its token on the command line, where ``ps`` shows it."""
    if options["token-on-argv"]:
        log.warn(
            "{program}: --token on the command line is visible to every local user (ps, /proc): "
            "use --token-file FILE instead",
            program=program,
        )
