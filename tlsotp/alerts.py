"""Typed alerts: every refusal in tlsotp is one of these, never a bare traceback.

The codes are TLS's (RFC 8446, section 6) where TLS has one, so that readers who know TLS
recognise them; ``AlertError`` carries one across layers (certificate verification, the
handshake state machines, the record layer) to the Twisted shell, which sends it to the peer,
logs one line and closes.

What a client session's failure was, for code that embeds the client (``tlsotp.client``)::

    TLSOTPError                  every error tlsotp raises on purpose
    └── AlertError               carries an alert code and a detail
        ├── PeerUnreachable      no session at all: connection refused, connect timeout, DNS,
        │                        bad endpoint (alert is handshake_failure; nothing was exchanged)
        ├── PeerRefused          the peer ended the session with this alert (its refusal)
        ├── LocalRefusal         we refused the peer and sent it this alert (bad certificate,
        │                        bad answer, timeout waiting for it)
        └── SessionTruncated     the peer closed TCP without any alert

They all stay ``AlertError``s, so code written as ``except AlertError`` keeps working.
"""

from __future__ import annotations

import enum


class Alert(enum.IntEnum):
    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    user_canceled = 90
    missing_extension = 109
    certificate_required = 116


class TLSOTPError(Exception):
    """The base of every error tlsotp raises on purpose (never for a bug)."""


class AlertError(TLSOTPError):
    """A refusal with a TLS-style alert code and a human-readable detail.

    The detail is for logs and the local user; it must never contain key material.
    """

    def __init__(self, alert: Alert, detail: str = "") -> None:
        super().__init__(alert, detail)
        self.alert = alert
        self.detail = detail

    def __str__(self) -> str:
        if self.detail:
            return f"{self.alert.name}: {self.detail}"
        return self.alert.name


class PeerUnreachable(AlertError):
    """No session: the peer could not be reached (refused, timed out, no such host, bad endpoint).

    Nothing was exchanged; ``alert`` is ``handshake_failure`` only so that ``except AlertError``
    code written before this class existed still catches it."""

    def __init__(self, detail: str) -> None:
        super().__init__(Alert.handshake_failure, detail)


class PeerRefused(AlertError):
    """The peer ended the session with ``alert`` (it refused us, or closed without answering)."""


class LocalRefusal(AlertError):
    """We ended the session and sent the peer ``alert``: it failed our checks, or timed out."""


class SessionTruncated(AlertError):
    """The peer closed the connection without an alert, before the session ended."""
