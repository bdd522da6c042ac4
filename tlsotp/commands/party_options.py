"""Options shared by the server and client daemons and the ``tlsotp client`` command.

Both parties identify themselves the same way: a data dir holding key and certificate, the
TTP's endpoint, the pinned root (fingerprint or file), and on first start a one-time token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.python import usage

from tlsotp.commands.option_types import seconds
from tlsotp.commands.requester import pin_from_options
from tlsotp.handshake import DEFAULT_SUITES, Suite, parse_suite_list
from tlsotp.pki.keys import KEY_TYPE_NAMES, KeyType, parse_key_type

DEFAULT_TIMEOUT = 30.0


class PartyOptions(usage.Options):
    """The common part; subclasses add their own parameters and call ``super().postOptions()``."""

    optParameters: list[list[Any]] = [
        ["data-dir", "d", None, "Directory for this party's key, certificate, root and CRL (created if missing)."],
        ["ttp", None, "tcp:host=127.0.0.1:port=7000", "Endpoint string of the TTP."],
        ["ca-fingerprint", None, None, "Pin the TTP root by its fingerprint, sha256:HEX."],
        ["ca-cert", None, None, "Pin the TTP root by a PEM file holding it."],
        ["token", None, None, "One-time enrollment token from the TTP operator (first start only)."],
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

    @property
    def suites(self) -> tuple[Suite, ...]:
        return tuple(self["suites"])
