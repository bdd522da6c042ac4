"""The TTP's network shell: netstrings in, one reply out, then close.

The protocol only moves bytes: it hands the one request it accepts to ``handle`` (the Issuer,
on the daemon's worker thread) and sends what comes back. Framing errors, oversized frames and
idle peers are refused here, with a typed reply, one log line and a closed connection; the
netstrings are parsed by ``tlsotp.framing.NetstringDecoder``, which says which framing error it
found (``too_long`` or ``decode_error``).

The factory holds the connection slots (``tlsotp.services.connection_slots``): a connection whose request
is not complete yet gives way to a newcomer when the TTP is full (refused ``timeout``), and one
refused because every slot holds a request under way gets ``internal_error``. Under a flood,
these (and idle peers timing out) are logged once, then counted once per interval.
"""

from __future__ import annotations

import enum
import time
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from tlsotp.framing import Frame, FrameTooLong, FramingError, NetstringDecoder, encode
from tlsotp.services.addresses import describe_address
from tlsotp.services.connection_slots import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_ADDRESS,
    ConnectionTracker,
    SlotKeeper,
    SlottedFactory,
)
from tlsotp.services.events import TTPEvents
from tlsotp.ttp import wire
from tlsotp.ttp.issuer import Outcome, refused
from tlsotp.ttp.wire import Refusal

DEFAULT_TIMEOUT = 30.0

Handler = Callable[[bytes], "Deferred[Outcome]"]

log = Logger(namespace="tlsotp.ttp")


class _State(enum.Enum):
    waiting = "waiting"  # for the one request
    working = "working"  # the request is being decided
    done = "done"  # replied or refused; everything further is ignored


class EnrollmentServerProtocol(Protocol, TimeoutMixin):
    MAX_LENGTH = wire.MAX_REQUEST_LENGTH

    def __init__(
        self, handle: Handler, timeout: float | None, *, first_message_timeout: float | None = None,
        slots: SlotKeeper | None = None, events: TTPEvents | None = None,
        connections: ConnectionTracker | None = None,
    ) -> None:
        self._handle = handle
        self._connections = connections
        self._events = events or TTPEvents()
        self._request_type: int | None = None
        self._request_at = 0.0
        # The request is the first and only message: the shorter of the two deadlines applies.
        deadlines = [t for t in (timeout, first_message_timeout) if t is not None]
        self._timeout = min(deadlines) if deadlines else None
        self._slots = slots
        self._phase = _State.waiting
        self._lost = False
        self._peer = "?"
        self._decoder = NetstringDecoder(self.MAX_LENGTH)
        #: No slot was free: refuse at once (counted by the slot keeper, not logged one by one).
        self.busy = False

    def connectionMade(self) -> None:
        if self._connections is not None:
            self._connections.opened(self)
        self._peer = describe_address(cast(Any, self.transport).getPeer())
        if self.busy:
            self._send(refused(Refusal.internal_error, "the TTP is at its connection limit; try again shortly"), quiet=True)
            return
        self._set_timeout(self._timeout)

    def dataReceived(self, data: bytes) -> None:
        # Data does not reset the timer: the whole request must arrive within the timeout, so a
        # peer trickling one byte at a time cannot hold a connection open indefinitely.
        if self._phase is not _State.waiting:
            return
        self._decoder.receive_data(data)
        while self._phase is _State.waiting:
            event = self._decoder.next_event()
            if isinstance(event, Frame):
                self.stringReceived(event.payload)
            elif isinstance(event, FramingError):
                self._framing_error(event)
            else:
                break

    def stringReceived(self, string: bytes) -> None:
        if self._phase is not _State.waiting:
            return
        self._phase = _State.working
        self._request_type, self._request_at = (string[0] if string else None), time.monotonic()
        self._set_timeout(None)  # the wait is ours now, not the peer's
        if self._slots is not None:
            self._slots.spoke(self)
        try:
            deciding = self._handle(string)
        except Exception as exc:
            self._send(refused(Refusal.internal_error, f"could not start handling: {type(exc).__name__}"))
            return
        deciding.addErrback(self._handler_failed)
        deciding.addCallback(self._send)

    def _handler_failed(self, failure: Failure) -> Outcome:
        outcome = refused(Refusal.internal_error, "the TTP failed to handle the request")
        kind = failure.type.__name__ if failure.type is not None else "failure"
        return Outcome(outcome.reply, f"{outcome.summary} ({kind}: {failure.getErrorMessage()})")

    def _send(self, outcome: Outcome, *, quiet: bool = False) -> None:
        if self._phase is _State.done:
            return
        self._phase = _State.done
        self._set_timeout(None)
        self._events.replied(self._request_type, outcome, time.monotonic() - self._request_at)
        if quiet or outcome.quiet:
            pass  # the slot keeper has counted it, or the store logged the outage it belongs to
        elif outcome.refusal is None:
            log.info("{peer}: {summary}", peer=self._peer, summary=outcome.summary)
        else:
            log.warn("{peer}: {summary}", peer=self._peer, summary=outcome.summary)
        if not self._lost and self.transport is not None:
            cast(Any, self.transport).write(encode(wire.encode(outcome.reply)))
            cast(Any, self.transport).loseConnection()
        if self._slots is not None:
            self._slots.release(self)

    def evict(self) -> None:
        """Called by the slot keeper: give way to a newcomer (no complete request yet)."""
        if self._phase is _State.waiting:
            self._send(refused(Refusal.timeout, "closed to make room: no complete request while the TTP was full"), quiet=True)

    def _framing_error(self, error: FramingError) -> None:
        # Say which, instead of a bare close.
        if isinstance(error, FrameTooLong):
            self._send(refused(Refusal.too_long, f"message longer than {self.MAX_LENGTH} bytes"))
        else:
            self._send(refused(Refusal.decode_error, "malformed netstring framing"))

    def _set_timeout(self, seconds: float | None) -> None:
        self.setTimeout(seconds)  # type: ignore[no-untyped-call]

    def timeoutConnection(self) -> None:
        if self._phase is _State.waiting:
            outcome = refused(Refusal.timeout, f"no complete request within {self._timeout:g} s")
            if self._slots is None:
                self._send(outcome)
            else:  # logged at once if it is the first in a while, else counted for the interval
                self._slots.event("silent", f"{self._peer}: {outcome.summary}")
                self._send(outcome, quiet=True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._connections is not None:
            self._connections.closed(self)  # first: a drain waiting for it goes on at once, as before
        # A decision under way still completes and is logged; only its reply goes nowhere.
        self._lost = True
        self._set_timeout(None)
        if self._phase is _State.waiting:
            self._phase = _State.done
        if self._slots is not None:
            self._slots.release(self)


class EnrollmentServerFactory(SlottedFactory[EnrollmentServerProtocol]):
    """Builds one protocol per connection; ``call_later`` lets tests drive the idle timeout.

    ``first_message_timeout`` (None: only ``timeout``) bounds the wait for the complete request;
    ``max_connections`` and ``max_per_address`` are the slot caps; ``connections`` is told of
    every connection opened and ended (the daemon's drain at a stop).
    """

    noisy = False  # the daemon logs its own line when it listens

    def __init__(
        self,
        handle: Handler,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        call_later: Any = None,
        first_message_timeout: float | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        events: TTPEvents | None = None,
        connections: ConnectionTracker | None = None,
    ) -> None:
        self.handle = handle
        self.events = events
        self.connections = connections
        self.timeout = timeout
        self.call_later = call_later
        self.first_message_timeout = first_message_timeout
        self.slots = SlotKeeper(
            max_connections=max_connections, max_per_address=max_per_address, call_later=call_later, log=log
        )

    def make_protocol(self) -> EnrollmentServerProtocol:
        return EnrollmentServerProtocol(
            self.handle, self.timeout, first_message_timeout=self.first_message_timeout, slots=self.slots,
            events=self.events, connections=self.connections,
        )
