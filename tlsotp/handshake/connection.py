"""What client and server connections share: frame dispatch, alerts, records, failure.

A connection is a plain object: frames in (``receive_frame``), events out, frames queued for
the caller to send (``frames_to_send``). It never raises for anything the peer sends: every
refusal becomes an alert frame, a ``ConnectionFailed`` event and a terminal state in which
every later frame is ignored.

Protection boundary: everything a side sends up to and including its own Finished travels in
clear; everything after (application data *and* alerts) is sealed with its application keys.
So a receiver knows exactly which frames must be protected, and once the handshake is over an
attacker can neither forge an alert nor truncate the conversation with a fake close_notify.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Generic, TypeVar

from cryptography import x509

from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Reader
from tlsotp.handshake.events import (
    AlertReceived,
    ApplicationData,
    ConnectionFailed,
    Event,
    PeerClosed,
    TraceRecord,
)
from tlsotp.handshake.frames import ContentType, encode_frame, split_frame
from tlsotp.handshake.limits import MAX_PLAINTEXT
from tlsotp.handshake.messages import HandshakeMessage, HandshakeType, encode_handshake, split_handshake
from tlsotp.handshake.record import RecordOpener, RecordSealer
from tlsotp.handshake.suites import Suite
from tlsotp.handshake.transcript import Transcript

StateT = TypeVar("StateT", bound=enum.Enum)


def _record_fields(seq: int, ciphertext_length: int) -> dict[str, str]:
    """A protected record's trace fields: built only when an observer asks for them."""
    return {"sequence_number": str(seq), "ciphertext_length": str(ciphertext_length)}


class ConnectionStateError(RuntimeError):
    """The caller asked for something the connection cannot do in its current state
    (e.g. application data before the handshake completes). A local bug, not a peer refusal."""


class ConnectionBase(Generic[StateT]):
    def __init__(
        self,
        initial: StateT,
        closed: StateT,
        failed: StateT,
        random_bytes: Callable[[int], bytes],
        observer: Callable[[TraceRecord], None] | None,
    ) -> None:
        self.state: StateT = initial
        self._closed_state = closed
        self._failed_state = failed
        self._random_bytes = random_bytes
        self._observer = observer
        self._outgoing: list[bytes] = []
        self._transcript = Transcript()
        self._sealer: RecordSealer | None = None
        self._opener: RecordOpener | None = None
        self.suite: Suite | None = None
        self.peer_chain: tuple[x509.Certificate, ...] = ()
        self.handshake_complete = False

    # -- public API -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection is over (closed or failed): nothing more goes in or out."""
        return self.state in (self._closed_state, self._failed_state)

    def receive_frame(self, frame: bytes) -> list[Event]:
        if self.closed:
            return []
        try:
            content_type, body = split_frame(frame)
            if content_type is ContentType.alert:
                return self._receive_alert(body, len(frame))
            if content_type is ContentType.handshake:
                if self._opener is not None:
                    raise AlertError(Alert.unexpected_message, "handshake message after the peer's Finished")
                msg_type, msg_body = split_handshake(body)
                return self._receive_handshake(msg_type, msg_body, body, len(frame))
            return self._receive_application_data(body, len(frame))
        except AlertError as exc:
            return self._fail(exc.alert, exc.detail)
        except Exception as exc:  # noqa: BLE001 - a decoder bug: fail closed, never a traceback
            return self._fail(Alert.internal_error, f"failed on a received frame: {type(exc).__name__}: {exc}")

    def send_application_data(self, data: bytes) -> None:
        """Queue ``data`` as one or more protected records of at most MAX_PLAINTEXT bytes."""
        if self.closed:
            raise ConnectionStateError("connection is closed")
        if not self.handshake_complete or self._sealer is None:
            raise ConnectionStateError("application data before the handshake is complete")
        view = memoryview(bytes(data))
        for start in range(0, len(view), MAX_PLAINTEXT):
            if self._sealer.records_left <= 1:  # the last sequence number is kept for close_notify
                self.close()
                raise ConnectionStateError("record limit reached; connection closed, reconnect")
            chunk = bytes(view[start : start + MAX_PLAINTEXT])
            seq = self._sealer.sequence_number
            ciphertext = self._sealer.seal(ContentType.application_data, chunk)
            self._queue(
                encode_frame(ContentType.application_data, ciphertext),
                "ApplicationData",
                functools.partial(_record_fields, seq, len(ciphertext)),
            )

    def close(self) -> None:
        """Queue close_notify and end the connection (a no-op once it is over)."""
        if self.closed:
            return
        self._queue_alert(Alert.close_notify)
        self._enter_terminal(self._closed_state)

    def abort(self, alert: Alert, detail: str) -> list[Event]:
        """A local failure (timeout, user cancel): tell the peer and end the connection."""
        if self.closed:
            return []
        return self._fail(alert, detail)

    def frames_to_send(self) -> list[bytes]:
        frames, self._outgoing = self._outgoing, []
        return frames

    # -- for subclasses ---------------------------------------------------------------------

    def _receive_handshake(self, msg_type: HandshakeType, body: bytes, raw: bytes, size: int) -> list[Event]:
        raise NotImplementedError

    def _forget_secrets(self) -> None:
        """Drop references to key material when the connection ends (Python cannot wipe it)."""

    def _unexpected(self, msg_type: HandshakeType) -> AlertError:
        return AlertError(Alert.unexpected_message, f"{msg_type.name} not expected in state {self.state.name}")

    def _random(self, n: int) -> bytes:
        value = self._random_bytes(n)
        if len(value) != n:
            raise AlertError(Alert.internal_error, f"random source returned {len(value)} bytes, wanted {n}")
        return value

    def _send_handshake(self, message: HandshakeMessage) -> bytes:
        """Queue one handshake message, append it to the transcript, return its bytes."""
        raw = encode_handshake(message)
        self._transcript.append(raw)
        self._queue(encode_frame(ContentType.handshake, raw), type(message).__name__, message.trace_fields)
        return raw

    def _trace_received(self, message: HandshakeMessage, size: int) -> None:
        if self._observer is not None:
            self._observer(TraceRecord("recv", type(message).__name__, size, message.trace_fields()))

    # -- internals --------------------------------------------------------------------------

    def _queue(self, frame: bytes, kind: str, fields: Callable[[], dict[str, str]]) -> None:
        """Queue a frame; ``fields`` is only called when someone is watching (it may parse
        certificates)."""
        self._outgoing.append(frame)
        if self._observer is not None:
            self._observer(TraceRecord("send", kind, len(frame), fields()))

    def _queue_alert(self, alert: Alert) -> None:
        if self._sealer is None:
            body, protected = bytes([alert]), "no"
        elif self._sealer.records_left > 0:
            body, protected = self._sealer.seal(ContentType.alert, bytes([alert])), "yes"
        else:
            return  # no sequence number left to protect it with: the peer will see the close
        self._queue(encode_frame(ContentType.alert, body), "Alert", lambda: {"alert": alert.name, "protected": protected})

    def _fail(self, alert: Alert, detail: str) -> list[Event]:
        self._queue_alert(alert)
        self._enter_terminal(self._failed_state)
        return [ConnectionFailed(alert, detail)]

    def _enter_terminal(self, state: StateT) -> None:
        self.state = state
        self._sealer = None
        self._opener = None
        self._forget_secrets()

    def _receive_alert(self, body: bytes, size: int) -> list[Event]:
        protected = self._opener is not None
        plaintext = self._opener.open(ContentType.alert, body) if self._opener is not None else body
        reader = Reader(plaintext)
        code = reader.u8()
        reader.done()
        try:
            alert = Alert(code)
        except ValueError:
            raise AlertError(Alert.decode_error, f"unknown alert code {code}") from None
        if self._observer is not None:
            self._observer(TraceRecord("recv", "Alert", size, {"alert": alert.name, "protected": "yes" if protected else "no"}))
        if alert is Alert.close_notify:
            self._queue_alert(Alert.close_notify)
            self._enter_terminal(self._closed_state)
            return [PeerClosed()]
        self._enter_terminal(self._failed_state)
        return [AlertReceived(alert)]

    def _receive_application_data(self, body: bytes, size: int) -> list[Event]:
        if self._opener is None:
            raise AlertError(Alert.unexpected_message, f"application data not allowed in state {self.state.name}")
        seq = self._opener.sequence_number
        plaintext = self._opener.open(ContentType.application_data, body)
        if self._observer is not None:
            self._observer(
                TraceRecord("recv", "ApplicationData", size, {"sequence_number": str(seq), "ciphertext_length": str(len(body))})
            )
        return [ApplicationData(plaintext)] if plaintext else []
