"""The requester's side of the TTP link: send one request, receive one reply, bounded in time.

Only bytes move here. What the reply means, and whether to believe it, is decided by
``tlsotp.services.enrollment`` against the pinned root. The reply's netstring is parsed by
``tlsotp.framing.NetstringDecoder``; any framing error (too long or malformed) is ``decode_error``.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from tlsotp.alerts import Alert, AlertError
from tlsotp.framing import Frame, FramingError, NetstringDecoder, encode
from tlsotp.ttp import wire


class TTPUnavailable(ConnectionError):
    """The TTP could not be reached, did not answer in time, or hung up without a reply."""


class _OneRequestFactory(Factory):
    """Hands the endpoint the one protocol of one TTP call. Quiet: Twisted's default (noisy)
    factory logs a "Starting factory" / "Stopping factory" pair on every call."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol


class EnrollmentClientProtocol(Protocol):
    MAX_LENGTH = wire.MAX_REPLY_LENGTH

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._decoder = NetstringDecoder(self.MAX_LENGTH)
        self.reply: Deferred[wire.Reply] = Deferred(lambda _: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            cast(Any, self.transport).abortConnection()

    def connectionMade(self) -> None:
        cast(Any, self.transport).write(encode(self._request))

    def dataReceived(self, data: bytes) -> None:
        if self.reply.called:
            return
        self._decoder.receive_data(data)
        while not self.reply.called:
            event = self._decoder.next_event()
            if isinstance(event, Frame):
                self.stringReceived(event.payload)
            elif isinstance(event, FramingError):
                self._fail(AlertError(Alert.decode_error, "malformed framing from the TTP"))
            else:
                break

    def stringReceived(self, string: bytes) -> None:
        if self.reply.called:
            return
        try:
            reply = wire.decode_reply(string)
        except AlertError as exc:
            self._fail(AlertError(exc.alert, f"malformed reply from the TTP: {exc.detail}"))
            return
        self.reply.callback(reply)
        cast(Any, self.transport).loseConnection()

    def _fail(self, error: Exception) -> None:
        if not self.reply.called:
            self.reply.errback(error)
        self._abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.reply.called:
            self.reply.errback(TTPUnavailable(f"the TTP closed the connection without replying ({reason.getErrorMessage()})"))


def exchange(reactor: IReactorTime, ttp: str | IStreamClientEndpoint, request: wire.Request, timeout: float) -> Deferred[wire.Reply]:
    """Connect to the TTP at ``ttp`` (an endpoint string or object), send ``request``, return its one reply."""
    if isinstance(ttp, str):
        try:
            endpoint = clientFromString(reactor, ttp)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, KeyError) as exc:
            return defer.fail(TTPUnavailable(f"bad TTP endpoint {ttp!r}: {exc}"))
    else:
        endpoint, ttp = ttp, type(ttp).__name__
    protocol = EnrollmentClientProtocol(wire.encode(request))

    def connected(_: object) -> Deferred[wire.Reply]:
        return protocol.reply

    def failed(failure: Failure) -> Failure:
        # Timed out while connecting (the connect attempt is cancelled) or while waiting.
        if isinstance(failure.value, (defer.TimeoutError, ConnectingCancelledError)):
            raise TTPUnavailable(f"no reply from the TTP at {ttp} within {timeout:g} s")
        if isinstance(failure.value, ConnectError):
            raise TTPUnavailable(f"cannot connect to the TTP at {ttp}: {failure.getErrorMessage()}")
        return failure

    d: Deferred[wire.Reply] = endpoint.connect(_OneRequestFactory(protocol)).addCallback(connected)
    d.addTimeout(timeout, reactor)
    d.addErrback(failed)
    return d
