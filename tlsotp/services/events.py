"""What the daemons tell an observer about their work: the hooks ``--metrics`` fills in.

The bank server's protocol and the TTP's service call these at the real events (a handshake
done, a session ended, an OTP issued, a reply sent); the base classes do nothing, so a daemon
without ``--metrics`` pays one method call per event and imports no metrics library.
``tlsotp.services.metrics`` subclasses them with Prometheus counters.
"""

from __future__ import annotations

from tlsotp.ttp.issuer import Outcome

__all__ = ["BankEvents", "TTPEvents"]


class BankEvents:
    """The bank server's events (the base ignores them)."""

    def handshake_done(self, seconds: float) -> None:
        """A handshake completed, ``seconds`` after the connection was made."""

    def session_ended(self, outcome: str, alert: str, seconds: float) -> None:
        """A connection ended: ``outcome`` is ``issued``, ``confirmed``, ``closed`` (a clean close
        with no answer), ``refused`` (this server sent ``alert``) or ``peer_alert`` (the client sent
        ``alert``, or closed without one); ``alert`` is ``none`` for the first three."""

    def otp_issued(self) -> None:
        """An OTP was granted."""

    def otp_refused(self, reason: str) -> None:
        """A request for an OTP was refused: ``locked`` (the transaction) or ``store_failed``."""

    def confirmation(self, status: str) -> None:
        """A confirmation was answered with ``status`` (a ``ConfirmStatus`` name)."""

    def crl_refreshed(self) -> None:
        """A CRL refresh succeeded."""

    def certificate_renewed(self) -> None:
        """The server's certificate was renewed."""

    def ttp_failed(self, task: str) -> None:
        """A call to the TTP failed: ``task`` is ``crl_refresh`` or ``renewal``."""


class TTPEvents:
    """The TTP's events (the base ignores them)."""

    def replied(self, request_type: int | None, outcome: Outcome, seconds: float) -> None:
        """A reply was sent (or a refusal decided) ``seconds`` after the request arrived;
        ``request_type`` is the request's first byte (a ``wire.MessageType``), None when no
        complete request arrived (a framing error, a timeout, a full TTP)."""
