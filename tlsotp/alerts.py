"""Typed alerts: every refusal in tlsotp is one of these, never a bare traceback.

The codes are TLS's (RFC 8446, section 6) where TLS has one, so that readers who know TLS
recognise them; ``AlertError`` carries one across layers (certificate verification, the
handshake state machines, the record layer) to the Twisted shell, which sends it to the peer,
logs one line and closes.
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


class AlertError(Exception):
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
