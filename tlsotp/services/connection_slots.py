"""Connection slots: which connections a daemon holds, and which one gives way to a newcomer.

Both daemons (the bank server and the TTP) hold at most ``max_connections`` connections, and
at most ``max_per_address`` from one source address. A connection that has not yet sent a
complete first message is *silent*; when a newcomer finds every slot taken (in total, or for
its own address), the oldest silent connection (of its address, or overall) is evicted to make
room. Only when every slot that could be freed holds a connection that has already spoken is
the newcomer refused. So a flood of idle connections, even from the real client's own address,
cannot lock a real client out: a real client speaks at once and keeps its slot.

``ConnectionSlots`` is the bookkeeping alone, with no I/O and no clock. ``ThrottledLog`` says
when a line about load may be logged (the first event at once, then one count per interval).
``SlotKeeper`` joins them for a Twisted factory; the protocols tell it when their first
complete message arrived and when they are done.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Protocol, TypeVar, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_PER_ADDRESS = 32
DEFAULT_FIRST_MESSAGE_TIMEOUT = 5.0
LOG_INTERVAL = 10.0

H = TypeVar("H", bound=Hashable)


@dataclass(frozen=True)
class Admission(Generic[H]):
    """The decision for a newcomer: admitted or not, and whom to abort to make room.

    The evicted connections have already given up their slots; the caller closes them.
    """

    admitted: bool
    evicted: tuple[H, ...] = ()
    #: When refused: "total" or "per-address", the cap that every speaking connection filled.
    full: str | None = None


class ConnectionSlots(Generic[H]):
    """Slots for connections identified by ``handle``, grouped by a source-address key."""

    def __init__(self, max_connections: int, max_per_address: int) -> None:
        if max_connections < 1 or max_per_address < 1:
            raise ValueError("connection caps must be at least 1")
        self.max_connections = max_connections
        self.max_per_address = min(max_per_address, max_connections)
        self._address: dict[H, str] = {}
        self._per_address: Counter[str] = Counter()
        # Silent connections, oldest first: overall, and per address.
        self._silent: OrderedDict[H, None] = OrderedDict()
        self._silent_at: dict[str, OrderedDict[H, None]] = {}

    def __len__(self) -> int:
        return len(self._address)

    def __contains__(self, handle: object) -> bool:
        return handle in self._address

    def count(self, address: str) -> int:
        return self._per_address[address]

    @property
    def silent(self) -> int:
        return len(self._silent)

    def is_silent(self, handle: H) -> bool:
        return handle in self._silent

    def admit(self, handle: H, address: str) -> Admission[H]:
        if handle in self._address:
            raise ValueError("this connection already holds a slot")
        evicted: list[H] = []
        if self._per_address[address] >= self.max_per_address:
            victim = self._oldest_silent(self._silent_at.get(address))
            if victim is None:
                return Admission(False, full="per-address")
            self.release(victim)
            evicted.append(victim)
        if len(self._address) >= self.max_connections:
            # Not reached after a per-address eviction, which already freed one slot overall.
            victim = self._oldest_silent(self._silent)
            if victim is None:
                return Admission(False, full="total")
            self.release(victim)
            evicted.append(victim)
        self._address[handle] = address
        self._per_address[address] += 1
        self._silent[handle] = None
        self._silent_at.setdefault(address, OrderedDict())[handle] = None
        return Admission(True, tuple(evicted))

    def spoke(self, handle: H) -> None:
        """The connection sent its first complete message: it is no longer evicted for a newcomer."""
        address = self._address.get(handle)
        if address is None or handle not in self._silent:
            return
        del self._silent[handle]
        self._forget_silent_at(address, handle)

    def release(self, handle: H) -> None:
        """The connection is gone (or done); releasing twice, or an evicted one, is harmless."""
        address = self._address.pop(handle, None)
        if address is None:
            return
        self._per_address[address] -= 1
        if not self._per_address[address]:
            del self._per_address[address]
        if handle in self._silent:
            del self._silent[handle]
            self._forget_silent_at(address, handle)

    def _forget_silent_at(self, address: str, handle: H) -> None:
        group = self._silent_at[address]
        del group[handle]
        if not group:
            del self._silent_at[address]

    @staticmethod
    def _oldest_silent(group: OrderedDict[H, None] | None) -> H | None:
        if not group:
            return None
        return next(iter(group))


def address_key(addr: object) -> str:
    """The source a per-address cap counts: the IPv4 address, or the /64 an IPv6 address is in
    (one host commonly holds a whole /64), or one key for every local (UNIX socket) peer."""
    if isinstance(addr, IPv4Address):
        return addr.host
    if isinstance(addr, IPv6Address):
        host = addr.host.split("%", 1)[0]
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            return host
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return "local" if addr is not None else "unknown"


class ThrottledLog:
    """When to log events under load: the first one at once (with its own detail), then, while
    more keep coming, one count per interval instead of one line each."""

    def __init__(self) -> None:
        self.open = False
        self.pending: Counter[str] = Counter()

    def event(self, kind: str) -> bool:
        """Record one event; True if it should be logged now (and an interval timer started)."""
        if self.open:
            self.pending[kind] += 1
            return False
        self.open = True
        return True

    def interval_over(self) -> tuple[Counter[str], bool]:
        """The counts to log for the interval just over, and whether to start another one."""
        counts, self.pending = self.pending, Counter()
        self.open = bool(counts)
        return counts, self.open


class Occupant(Protocol):
    """What a protocol holding a slot must do when evicted: close, with a typed refusal."""

    def evict(self) -> None: ...

    def __hash__(self) -> int: ...


#: How each kind of event is counted in a load summary.
EVENT_TEXT = {
    "evicted": "silent connections closed to make room for new ones",
    "refused": "connections refused because every slot held a connection that had spoken",
    "silent": "connections closed for sending no complete first message in time",
    "gone": "connections closed by the peer before sending anything",
}


class SlotKeeper:
    """A factory's slots and its load log; ``call_later`` is the reactor's (or a test clock's)."""

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        call_later: Callable[[float, Callable[[], None]], Any] | None = None,
        log: Logger | None = None,
        interval: float = LOG_INTERVAL,
    ) -> None:
        self.slots: ConnectionSlots[Occupant] = ConnectionSlots(max_connections, max_per_address)
        self._call_later = call_later
        self.log = log or Logger()
        self.interval = interval
        self._throttle = ThrottledLog()
        self._timer: Any = None
        self._stopped = False
        self.totals: Counter[str] = Counter()

    def admit(self, occupant: Occupant, addr: object) -> bool:
        key = address_key(addr)
        admission = self.slots.admit(occupant, key)
        for victim in admission.evicted:
            self.event("evicted", f"closed a silent connection to make room for one from {key}")
            victim.evict()
        if not admission.admitted:
            cap = (
                f"all {self.slots.max_per_address} slots for {key}"
                if admission.full == "per-address"
                else f"all {self.slots.max_connections} slots"
            )
            self.event("refused", f"refused a connection from {key}: {cap} hold connections that have spoken")
        return admission.admitted

    def spoke(self, occupant: Occupant) -> None:
        self.slots.spoke(occupant)

    def release(self, occupant: Occupant) -> None:
        self.slots.release(occupant)

    def event(self, kind: str, detail: str) -> None:
        """Log ``detail`` now if nothing was logged in this interval; else count it for the summary."""
        self.totals[kind] += 1
        if self._stopped:  # no timer outlives the factory: the stragglers are logged as they come
            self.log.warn("{detail}", detail=detail)
        elif self._throttle.event(kind):
            self.log.warn("{detail}", detail=detail)
            self._start_interval()

    def _start_interval(self) -> None:
        if self._call_later is None:
            from twisted.internet import reactor

            self._timer = cast(Any, reactor).callLater(self.interval, self._interval_over)
        else:
            self._timer = self._call_later(self.interval, self._interval_over)

    def _interval_over(self) -> None:
        self._timer = None
        counts, again = self._throttle.interval_over()
        self._log_counts(counts)
        if again:
            self._start_interval()

    def _log_counts(self, counts: Counter[str]) -> None:
        if counts:
            summary = "; ".join(f"{n} {EVENT_TEXT.get(kind, kind)}" for kind, n in sorted(counts.items()))
            self.log.warn(
                "under load, in the last {seconds:g} s: {summary} ({open} of {max} slots in use)",
                seconds=self.interval, summary=summary, open=len(self.slots), max=self.slots.max_connections,
            )

    def start(self) -> None:
        """The factory (re)starts listening: throttle again."""
        self._stopped = False

    def stop(self) -> None:
        """The factory stops: log what is still counted, cancel the timer and start no other."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        counts, _ = self._throttle.interval_over()
        self._throttle.open = False
        self._log_counts(counts)


class ConnectionTracker(Protocol):
    """Hears of each connection a factory's protocols open and end (``daemon_services.ConnectionDrain``)."""

    def opened(self, protocol: object) -> None: ...

    def closed(self, protocol: object) -> None: ...


#: A protocol with a ``busy`` flag and an ``evict`` method (an ``Occupant``).
SP = TypeVar("SP", bound=TwistedProtocol)


class SlottedFactory(Factory, Generic[SP]):
    """What both daemons' factories share: each connection takes a slot (or is told it is busy),
    timeouts run on ``call_later`` when a test gives one, and the load log lives as long as the
    factory listens."""

    slots: SlotKeeper
    call_later: Any = None
    #: Told of every connection opened and ended (for the drain at a stop), when given.
    connections: ConnectionTracker | None = None

    def make_protocol(self) -> SP:
        raise NotImplementedError

    def buildProtocol(self, addr: object) -> SP:
        protocol = self.make_protocol()
        protocol.factory = self
        built = cast(Any, protocol)
        if self.call_later is not None:
            built.callLater = self.call_later  # TimeoutMixin's, and the first-message deadline's
        # A refused connection is still accepted, to be told why (alert or refusal) and closed.
        built.busy = not self.slots.admit(built, addr)
        return protocol

    def startFactory(self) -> None:
        self.slots.start()

    def stopFactory(self) -> None:
        self.slots.stop()
