"""What the state machines report to their caller, and what they show an observer.

Events are plain frozen values: the Twisted shell (or a test) reacts to them; the machines
never call back into I/O. ``TraceRecord`` exists for teaching: it shows each message's
decoded public fields as it is sent or received, and never secrets or keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from cryptography import x509

from tlsotp.alerts import Alert
from tlsotp.handshake.suites import Suite


@dataclass(frozen=True)
class HandshakeComplete:
    """The peer is authenticated and application data may be sent.

    On the client this comes after the server's CertificateVerify checks out and the client's
    Finished is queued; server application data is still refused until the server's Finished
    verifies. On the server it comes after the client's Finished verifies.
    """

    suite: Suite
    peer_chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class ApplicationData:
    data: bytes


@dataclass(frozen=True)
class AlertReceived:
    """The peer refused (any alert but close_notify); the connection is over."""

    alert: Alert


@dataclass(frozen=True)
class ConnectionFailed:
    """We refused: the alert frame is already queued and the connection is over."""

    alert: Alert
    detail: str


@dataclass(frozen=True)
class PeerClosed:
    """The peer sent close_notify; our own close_notify is queued in reply."""


Event: TypeAlias = HandshakeComplete | ApplicationData | AlertReceived | ConnectionFailed | PeerClosed


@dataclass(frozen=True)
class TraceRecord:
    direction: Literal["send", "recv"]
    kind: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)
