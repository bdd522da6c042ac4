"""The requester's side of the TTP link: send one request, receive one reply, bounded in time.

Only bytes move here. What the reply means, and whether to believe it, is decided by
``tlsotp.services.enrollment`` against the pinned root. The reply's netstring is parsed by
``tlsotp.framing.NetstringDecoder``; any framing error (too long or malformed) is ``decode_error``.

Two transports for the same exchange: Twisted's (``exchange`` with an endpoint string or object),
and ``BlockingTTP``, a plain blocking socket with a deadline, for the one moment a daemon must talk
to the TTP before its reactor runs: its start-up under twistd, which has to succeed or fail
before twistd's launcher returns (see ``tlsotp.services.bank_service``).
"""

from __future__ import annotations

import socket
import time
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
            reply = _decode_reply(string)
        except AlertError as exc:
            self._fail(exc)
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


class _AddressRecorder:
    """Stands in for a reactor to learn where a client endpoint string points: Twisted's own
    ``clientFromString`` parses it (its full syntax: escapes, IPv6, unix paths) and the endpoint
    tells its address through ``connectTCP``/``connectUNIX`` of ``IReactorTCP``/``IReactorUNIX``
    (the only methods it needs); nothing connects."""

    def __init__(self) -> None:
        self.address: tuple[str, int] | str | None = None
        self.bind_address: tuple[str, int] | None = None

    def connectTCP(  # noqa: N802 - IReactorTCP's name
        self, host: str, port: int, factory: object, timeout: float = 30, bindAddress: tuple[str, int] | None = None  # noqa: N803
    ) -> None:
        self.address, self.bind_address = (host, port), bindAddress

    def connectUNIX(self, address: str, factory: object, timeout: float = 30, checkPID: bool = False) -> None:  # noqa: N802, N803
        self.address = address


class BlockingTTP:
    """The TTP at an endpoint string, reached with a blocking socket: only before a reactor runs.

    ``tcp:`` and ``unix:`` endpoints; ``exchange`` returns an already fired Deferred, so the
    requester's coroutines (enroll, fetch the CRL) run to their end inside the calling function.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        recorder = _AddressRecorder()
        try:
            endpoint = clientFromString(recorder, description)  # type: ignore[no-untyped-call]
        except Exception as exc:  # whatever a parser (or a plugin's) raises for a bad string
            raise TTPUnavailable(f"bad TTP endpoint {description!r}: {exc}") from None
        # Fails (no such reactor method) for endpoints other than tcp: and unix:.
        cast(Any, endpoint).connect(_OneRequestFactory(Protocol())).addErrback(lambda _: None)
        if recorder.address is None:
            raise TTPUnavailable(f"the TTP endpoint {description!r} is neither tcp: nor unix:, which start-up needs")
        self.address = recorder.address
        self.bind_address = recorder.bind_address

    def __str__(self) -> str:
        return self.description

    def exchange(self, request: wire.Request, timeout: float) -> Deferred[wire.Reply]:
        try:
            return defer.succeed(self.exchange_now(request, timeout))
        except Exception:
            return defer.fail()

    def exchange_now(self, request: wire.Request, timeout: float) -> wire.Reply:
        """Send ``request``, return the reply; every step within ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return left

        try:
            with self._connect(remaining()) as sock:
                sock.settimeout(remaining())
                sock.sendall(encode(wire.encode(request)))
                decoder = NetstringDecoder(wire.MAX_REPLY_LENGTH)
                while True:
                    event = decoder.next_event()
                    if isinstance(event, Frame):
                        return _decode_reply(event.payload)
                    if isinstance(event, FramingError):
                        raise AlertError(Alert.decode_error, "malformed framing from the TTP")
                    sock.settimeout(remaining())
                    data = sock.recv(65536)
                    if not data:
                        raise TTPUnavailable("the TTP closed the connection without replying")
                    decoder.receive_data(data)
        except TimeoutError:  # socket.timeout too
            raise TTPUnavailable(f"no reply from the TTP at {self.description} within {timeout:g} s") from None
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, TTPUnavailable):
                raise
            raise TTPUnavailable(f"cannot connect to the TTP at {self.description}: {exc.strerror or exc}") from None

    def _connect(self, timeout: float) -> socket.socket:
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.address)
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection(self.address, timeout, source_address=self.bind_address)


def _decode_reply(payload: bytes) -> wire.Reply:
    try:
        return wire.decode_reply(payload)
    except AlertError as exc:
        raise AlertError(exc.alert, f"malformed reply from the TTP: {exc.detail}") from None


def exchange(
    reactor: IReactorTime, ttp: str | IStreamClientEndpoint | BlockingTTP, request: wire.Request, timeout: float
) -> Deferred[wire.Reply]:
    """Connect to the TTP at ``ttp`` (an endpoint string or object), send ``request``, return its one reply."""
    if isinstance(ttp, BlockingTTP):
        return ttp.exchange(request, timeout)
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
