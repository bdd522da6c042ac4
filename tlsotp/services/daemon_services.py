"""The small Twisted services both daemons are made of, and how they drain on SIGTERM.

- ``ListeningService``: Twisted's ``StreamServerEndpointService``, which also says when it
  listens (``listening`` fires with the port) or why it cannot (``listening`` fails, and nothing
  else is logged for it: the daemon says it in one line and exits 1).
- ``PeriodicTask``: Twisted's ``TimerService`` running a coroutine every ``step`` seconds; when
  stopped, the run under way (a CRL fetch, a renewal) is cancelled rather than awaited, so a
  silent TTP cannot hold up a shutdown for the whole ``--timeout``.
- ``ConnectionDrain``: the connections a server factory has open, as its protocols report them
  (``opened``, ``closed``); ``drain(timeout)`` waits for them to end, and past the deadline
  aborts those left.

A daemon stops in this order: the listening service (new connections are refused at once) and
the periodic tasks; then the sessions in flight drain, up to the drain timeout; then the
database worker, after the calls those sessions queued.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, cast

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped, unused-ignore]

DEFAULT_DRAIN_TIMEOUT = 10.0

log = Logger()


@implementer(IStreamServerEndpoint)
class _ObservedEndpoint:
    """Tells the service what ``listen`` gave; a failure is handed over, not logged by Twisted."""

    def __init__(self, endpoint: IStreamServerEndpoint, service: ListeningService) -> None:
        self._endpoint = endpoint
        self._service = service

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def listened(port: IListeningPort) -> IListeningPort:
            self._service.port = port
            self._service.listening.callback(port)
            return port

        def failed(failure: Failure) -> None:
            self._service.listening.errback(failure)

        listen: Callable[[IProtocolFactory], Deferred[IListeningPort]] = cast(Any, self._endpoint).listen
        listening: Deferred[IListeningPort] = maybeDeferred(listen, factory)
        # On failure it fires with None, which StreamServerEndpointService takes as "no port".
        return cast("Deferred[IListeningPort]", listening.addCallbacks(listened, failed))


class ListeningService(StreamServerEndpointService):
    """``StreamServerEndpointService`` with ``port`` (once listening) and ``listening``."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any) -> None:  # an IProtocolFactory
        self.port: IListeningPort | None = None
        #: Fires with the port, or fails with why it cannot listen (once per start).
        self.listening: Deferred[IListeningPort] = Deferred()
        self._listen_called = False
        super().__init__(_ObservedEndpoint(endpoint, self), factory)  # type: ignore[no-untyped-call]

    def privilegedStartService(self) -> None:
        if self.listening.called:  # started again after a stop: a new outcome to tell
            self.listening = Deferred()
        self._listen_called = True
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        """Stop listening (or trying to); fires once the port is closed."""
        if not self._listen_called:
            return succeed(None)
        self._listen_called = False
        self.port = None
        return super().stopService()  # type: ignore[no-any-return, no-untyped-call]


class PeriodicTask(TimerService):
    """Runs ``task()`` every ``step`` seconds (the first run at once unless ``skip_first``);
    stopping cancels a run under way and fires once it has unwound."""

    def __init__(
        self,
        step: float,
        task: Callable[[], Coroutine[Any, Any, None]],
        *,
        clock: IReactorTime,
        skip_first: bool = False,
    ) -> None:
        super().__init__(step, self._run_once)  # type: ignore[no-untyped-call]
        self.clock = clock
        self._task = task
        self._skip_first = skip_first
        self._first = True
        self._current: Deferred[None] | None = None

    def startService(self) -> None:
        self._first = True
        super().startService()  # type: ignore[no-untyped-call]

    def _run_once(self) -> Deferred[None] | None:
        first, self._first = self._first, False
        if first and self._skip_first:
            return None
        running = Deferred.fromCoroutine(self._task())
        self._current = running

        def done(result: object) -> object:
            self._current = None
            if isinstance(result, Failure) and result.check(CancelledError):  # type: ignore[no-untyped-call]
                return None  # stopped on purpose
            return result

        return running.addBoth(done)

    def stopService(self) -> Deferred[None]:
        if not self.running:
            return succeed(None)
        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        if self._current is not None:
            self._current.cancel()
        return stopped


class ConnectionDrain:
    """The connections a server factory has open, so that a stop can wait for them (``drain``).

    The factory's protocols report them: ``opened`` first thing in ``connectionMade``, ``closed``
    first thing in ``connectionLost``, where Twisted's ``WrappingFactory`` registered and
    unregistered the ``ProtocolWrapper`` it put around each connection. This replaces it: the
    wrapper cost a Python call in every read, write and close of every connection."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock: Any = clock  # IReactorTime; its zope methods read as unbound to mypy
        #: The open connections' protocols, oldest first (a dict, as WrappingFactory's).
        self.protocols: dict[Any, None] = {}
        self._drained: list[Deferred[int]] = []
        self._aborted = 0

    @property
    def open_connections(self) -> int:
        return len(self.protocols)

    def opened(self, protocol: object) -> None:
        self.protocols[protocol] = None

    def closed(self, protocol: object) -> None:
        self.protocols.pop(protocol, None)
        if not self.protocols:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(self._aborted)

    def drain(self, timeout: float) -> Deferred[int]:
        """Fires once every connection has ended, with how many had to be aborted at the deadline."""
        self._aborted = 0
        if not self.protocols:
            return succeed(0)
        log.info(
            "waiting up to {timeout:g} s for {n} connection(s) in flight to finish",
            timeout=timeout, n=len(self.protocols),
        )
        drained: Deferred[int] = Deferred()
        self._drained.append(drained)
        deadline = self._clock.callLater(timeout, self._abort_the_rest)

        def finished(aborted: int) -> int:
            if deadline.active():
                deadline.cancel()
            return aborted

        return drained.addCallback(finished)

    def _abort_the_rest(self) -> None:
        left = list(self.protocols)
        if not left:
            return
        self._aborted = len(left)
        log.warn("drain deadline reached: closing the {n} connection(s) still open", n=len(left))
        for protocol in left:
            cast(Any, protocol.transport).abortConnection()
