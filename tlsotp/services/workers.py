"""Every core: the bank server as a supervisor and N worker processes sharing one listening socket.

``--workers N`` (N > 1) makes the twistd process a supervisor (``WorkerSupervisor``, a
``BankServerService``): it does everything that must happen once -- obtain or enroll the
credentials, open (create, migrate) the OTP database, fetch the CRL, listen on ``--listen``, and
later refresh the CRL and renew the certificate -- and serves no session itself. Once listening
it stops accepting on its own socket and hands that socket (one file descriptor, inherited) to N
worker processes (``reactor.spawnProcess``). Each worker (``BankWorker``, run by
``python -m tlsotp.commands.bank_worker``) adopts the socket (``adoptStreamPort``), loads the
credentials and CRL from the data dir, opens the same ``otp.sqlite3`` and serves sessions. The
kernel gives each accepted connection to one of the workers waiting on the socket.

- Reload: after a CRL refresh or a renewal (written to the data dir by the supervisor), the
  supervisor sends each worker SIGHUP; the worker reloads both files. A worker not yet serving
  when that happens is sent it once it serves.
- Logs: a worker writes its log events as lines on stdout (``WorkerLogWriter``); the supervisor publishes them
  in its own log, each prefixed ``worker I (pid P):``, so one log says which worker served what.
- Restart: a worker that exits while the supervisor runs is started again after a delay
  (``RestartPolicy``: doubling from ``first_delay`` up to ``max_delay`` while it keeps dying;
  back to ``first_delay`` once it had run ``stable_after`` seconds), one log line per death.
- Stop (SIGTERM to the supervisor): the supervisor closes its copy of the socket, stops its
  timers and sends SIGTERM to every worker, which stops accepting at once and drains its
  sessions (``--drain-timeout``); the supervisor exits once every worker has exited, and kills
  (SIGKILL) one still running ``STOP_GRACE`` seconds past the drain timeout.
- A worker dies with its supervisor: it asks Linux for SIGTERM when its parent dies
  (``PR_SET_PDEATHSIG``), and exits at once if the supervisor is already gone.

The OTP guarantees hold across workers because every decision is one ``BEGIN IMMEDIATE``
transaction on the shared SQLite file (``tlsotp.services.sqlite_worker.sqlite_transaction``):
a second process waits (busy timeout) instead of reading what the first is about to change.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.application import service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, InvalidLogLevelError, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped, unused-ignore]

from tlsotp.alerts import AlertError
from tlsotp.database_url import PostgresTarget
from tlsotp.handshake import Suite, suites_for_key
from tlsotp.handshake.suites import suite_for_code
from tlsotp.pki.credentials import Credentials, load_credentials
from tlsotp.pki.pem import PEMError, load_crl
from tlsotp.pki.verify import check_crl_signature
from tlsotp.services.bank_server import OTPServerFactory, ServerIdentity
from tlsotp.services.bank_service import CRL_FILE, BankServerService, BankServerSettings
from tlsotp.services.credentials import StartupError
from tlsotp.services.daemon_services import ConnectionDrain, PeriodicTask
from tlsotp.services.events import BankEvents
from tlsotp.services.otp_authority import OTPPolicy
from tlsotp.services.otp_backends import OTPStore, open_otp_store

__all__ = [
    "BankWorker", "RestartPolicy", "Restarter", "WorkerConfig", "WorkerEventsRelay", "WorkerLogWriter", "WorkerSecrets",
    "WorkerSupervisor",
]

log = Logger(namespace="tlsotp.services.workers")

#: The file descriptor a worker finds the listening socket on.
LISTEN_FD = 3
#: Seconds past the drain timeout before a worker still running at stop is killed.
STOP_GRACE = 10.0
#: A worker's log line longer than this is cut (a worker is ours, but bound what is buffered).
MAX_LINE = 256 * 1024
#: Field set on the worker's "serving" event: the supervisor's sign that the worker accepts.
READY_FIELD = "tlsotp_worker_ready"
#: Seconds between a worker's checks that its open-connection count changed (``--metrics``).
OPEN_CONNECTIONS_TICK = 1.0

FAMILIES = {IPv4Address: socket.AF_INET, IPv6Address: socket.AF_INET6, UNIXAddress: socket.AF_UNIX}


@dataclass(frozen=True)
class RestartPolicy:
    """How long to wait before starting a dead worker again."""

    first_delay: float = 0.5
    max_delay: float = 30.0
    #: A worker that ran this long before dying counts as healthy: its next delay is the first.
    stable_after: float = 10.0

    def delay(self, deaths_in_a_row: int) -> float:
        """The wait before the restart that follows the ``deaths_in_a_row``-th quick death."""
        return float(min(self.max_delay, self.first_delay * 2 ** max(0, deaths_in_a_row - 1)))


class Restarter:
    """Schedules the restart of each dead worker by ``RestartPolicy`` on ``clock``."""

    def __init__(self, clock: Any, policy: RestartPolicy, start: Callable[[int], None]) -> None:
        self.clock = clock  # IReactorTime
        self.policy = policy
        self.start = start
        self.deaths_in_a_row: dict[int, int] = {}
        self.pending: dict[int, IDelayedCall] = {}

    def died(self, index: int, ran_for: float) -> float:
        """Worker ``index`` died after running ``ran_for`` seconds; returns the delay scheduled."""
        deaths = 1 if ran_for >= self.policy.stable_after else self.deaths_in_a_row.get(index, 0) + 1
        self.deaths_in_a_row[index] = deaths
        delay = self.policy.delay(deaths)
        self.pending[index] = self.clock.callLater(delay, self._start, index)
        return delay

    def _start(self, index: int) -> None:
        del self.pending[index]
        self.start(index)

    def cancel(self) -> None:
        """No more restarts (the supervisor stops)."""
        pending, self.pending = self.pending, {}
        for call in pending.values():
            call.cancel()


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs, passed on its command line as one JSON argument."""

    index: int
    supervisor_pid: int
    family: int
    data_dir: Path
    name: str
    suites: tuple[int, ...]
    otp_digits: int
    otp_ttl: int
    max_attempts: int
    allowed_clients: tuple[str, ...] | None
    timeout: float
    first_message_timeout: float | None
    max_connections: int
    max_per_address: int
    drain_timeout: float
    #: ``--log-transactions``: the worker's grant and confirmation lines carry the text.
    log_transactions: bool = False
    #: ``--database``: the PostgreSQL database's URL (no password: that comes on stdin, see
    #: ``WorkerSecrets``), and ``--otp-pepper-file``; None: the data dir's SQLite file.
    database_url: str | None = None
    otp_pepper_file: Path | None = None
    #: ``--metrics``: the worker sends its sessions' events to the supervisor (``WorkerEventsRelay``).
    metrics: bool = False

    @classmethod
    def from_settings(cls, settings: BankServerSettings, index: int, family: int) -> WorkerConfig:
        return cls(
            metrics=settings.metrics is not None,
            database_url=None if settings.database is None else settings.database.url,
            otp_pepper_file=settings.otp_pepper_file,
            index=index, supervisor_pid=os.getpid(), family=family, data_dir=settings.data_dir,
            name=settings.name, suites=tuple(suite.code for suite in settings.suites),
            otp_digits=settings.otp_policy.digits, otp_ttl=settings.otp_policy.ttl_seconds,
            max_attempts=settings.otp_policy.max_attempts,
            allowed_clients=None if settings.allowed_clients is None else tuple(sorted(settings.allowed_clients)),
            timeout=settings.timeout, first_message_timeout=settings.first_message_timeout,
            max_connections=settings.max_connections, max_per_address=settings.max_per_address,
            drain_timeout=settings.drain_timeout, log_transactions=settings.log_transactions,
        )

    def to_json(self) -> str:
        fields = dict(self.__dict__)
        fields["data_dir"] = str(self.data_dir)
        fields["otp_pepper_file"] = None if self.otp_pepper_file is None else str(self.otp_pepper_file)
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        fields = json.loads(text)
        fields["data_dir"] = Path(fields["data_dir"])
        if fields.get("otp_pepper_file") is not None:
            fields["otp_pepper_file"] = Path(fields["otp_pepper_file"])
        fields["suites"] = tuple(fields["suites"])
        if fields["allowed_clients"] is not None:
            fields["allowed_clients"] = tuple(fields["allowed_clients"])
        return cls(**fields)

    @property
    def suite_list(self) -> tuple[Suite, ...]:
        found = [suite_for_code(code) for code in self.suites]
        return tuple(suite for suite in found if suite is not None)

    @property
    def otp_policy(self) -> OTPPolicy:
        return OTPPolicy(self.otp_digits, self.otp_ttl, self.max_attempts)

    def database(self, secrets: WorkerSecrets) -> PostgresTarget | None:
        return None if self.database_url is None else PostgresTarget(self.database_url, secrets.database_password)


#: The longest line of secrets a worker reads from its stdin.
MAX_SECRETS_LINE = 64 * 1024


@dataclass(frozen=True)
class WorkerSecrets:
    """What a worker needs that must not be on its command line (``ps`` shows that to every user)
    nor in its environment: the supervisor writes it as one JSON line to the worker's stdin,
    then closes it. Today only ``--database-password-file``'s password, read by the supervisor."""

    database_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: BankServerSettings) -> WorkerSecrets:
        return cls(None if settings.database is None else settings.database.password)

    def to_line(self) -> bytes:
        return json.dumps({"database_password": self.database_password}).encode("utf-8") + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> WorkerSecrets:
        """The secrets the supervisor wrote (none at all if it wrote nothing: EOF)."""
        try:
            fields = json.loads(line) if line.strip() else {}
        except ValueError:  # not ours (a worker started by hand): as if nothing was written
            fields = {}
        password = fields.get("database_password") if isinstance(fields, dict) else None
        return cls(password if isinstance(password, str) else None)


# -- a worker's log records -------------------------------------------------------------------


def encode_record(event: dict[str, Any]) -> str:
    """A worker's log event as one line: [level, namespace, time, text, ready], formatted in
    the worker (a traceback included); a small JSON list is cheap to write and to read back,
    unlike a whole serialised event, and this runs for every session."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        text = f"{text}\n{failure.getTraceback()}"
    level = event.get("log_level")
    return json.dumps([
        str(getattr(level, "name", "info")), str(event.get("log_namespace", "-")),
        event.get("log_time", 0.0), text, bool(event.get(READY_FIELD)),
    ]) + "\n"


def decode_record(line: str) -> tuple[LogLevel, str, float, str, bool] | None:
    """The record ``encode_record`` wrote, or None if ``line`` is not one."""
    try:
        level, namespace, when, text, ready = json.loads(line)
        return LogLevel.levelWithName(level), str(namespace), float(when), str(text), bool(ready)
    except (ValueError, TypeError, KeyError, InvalidLogLevelError):
        return None


@implementer(ILogObserver)
class WorkerLogWriter:
    """What a worker logs to: ``encode_record`` lines on ``out`` (its stdout), written in batches.

    Two lines per session, each its own write and its own wake-up of the supervisor, cost as
    much CPU as a tenth of a session: info lines wait up to ``delay`` seconds (or ``batch``
    lines) and leave together; a warning or worse, and the "serving" line, go at once, and
    ``flush`` runs when the worker stops. A worker killed outright loses at most ``delay``
    seconds of info lines."""

    def __init__(self, out: Any, clock: Any, delay: float = 0.05, batch: int = 64) -> None:
        self.out = out
        self.clock = clock  # IReactorTime
        self.delay = delay
        self.batch = batch
        self.pending: list[str] = []
        self.scheduled: IDelayedCall | None = None
        #: Called at each flush for one more line to send with the batch (or None): the metrics relay.
        self.sources: list[Callable[[], str | None]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.pending.append(encode_record(event))
        level = event.get("log_level")
        urgent = event.get(READY_FIELD) or level in (LogLevel.warn, LogLevel.error, LogLevel.critical)
        if urgent or len(self.pending) >= self.batch:
            self.flush()
        else:
            self.soon()

    def soon(self) -> None:
        """Flush within ``delay`` seconds (a source has something to send)."""
        if self.scheduled is None:
            self.scheduled = self.clock.callLater(self.delay, self.flush)

    def flush(self) -> None:
        if self.scheduled is not None:
            if self.scheduled.active():
                self.scheduled.cancel()
            self.scheduled = None
        for source in self.sources:
            line = source()
            if line is not None:
                self.pending.append(line)
        if self.pending:
            text, self.pending = "".join(self.pending), []
            self.out.write(text)
            self.out.flush()


# -- a worker's metrics events ----------------------------------------------------------------

#: The events a worker relays, by the one-letter kind its line uses, with their arguments' types.
EVENT_KINDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "h": ("handshake_done", (float,)),
    "s": ("session_ended", (str, str, float)),
    "i": ("otp_issued", ()),
    "r": ("otp_refused", (str,)),
    "c": ("confirmation", (str,)),
}
#: Longest label value a relayed event may carry (an outcome, alert, reason or status name).
MAX_LABEL = 64
#: Events in one line at most (each under 100 bytes): more go out at once, in a line of their own.
MAX_EVENTS_LINE = 1000


class WorkerEventsRelay(BankEvents):
    """A worker's ``BankEvents`` under ``--metrics``: its sessions' events, sent to the supervisor
    with the log writer's next batch (one JSON object line: ``{"events": [...], "open": N}``),
    which counts them in the one ``/metrics`` the supervisor serves. A worker keeps no registry
    of its own; ``open`` is its connections open now, for the ``tlsotp_open_connections`` gauge
    (sent with each batch, and by ``tick`` when it changed without an event)."""

    def __init__(self, writer: WorkerLogWriter) -> None:
        self.writer = writer
        self.open_connections: Callable[[], int] = lambda: 0
        self.pending: list[list[Any]] = []
        self.open_sent = 0
        writer.sources.append(self.drain)

    def _add(self, event: list[Any]) -> None:
        self.pending.append(event)
        if len(self.pending) >= MAX_EVENTS_LINE:
            self.writer.flush()  # a line stays far below what the supervisor reads of one (MAX_LINE)
        else:
            self.writer.soon()

    def handshake_done(self, seconds: float) -> None:
        self._add(["h", seconds])

    def session_ended(self, outcome: str, alert: str, seconds: float) -> None:
        self._add(["s", outcome, alert, seconds])

    def otp_issued(self) -> None:
        self._add(["i"])

    def otp_refused(self, reason: str) -> None:
        self._add(["r", reason])

    def confirmation(self, status: str) -> None:
        self._add(["c", status])

    def tick(self) -> None:
        """Periodically: an open-connection count that changed with no event goes out too."""
        if self.open_connections() != self.open_sent:
            self.writer.soon()

    def drain(self) -> str | None:
        open_now = self.open_connections()
        if not self.pending and open_now == self.open_sent:
            return None
        events, self.pending, self.open_sent = self.pending, [], open_now
        return json.dumps({"events": events, "open": open_now}) + "\n"


def decode_events(line: str) -> tuple[list[tuple[str, tuple[Any, ...]]], int] | None:
    """The (``BankEvents`` method name, arguments) of each event of a ``WorkerEventsRelay``
    line, and its open-connection count; None if ``line`` is not one."""
    try:
        record = json.loads(line)
        events, open_now = record["events"], record["open"]
    except (ValueError, TypeError, KeyError):
        return None
    if type(open_now) is not int or open_now < 0 or not isinstance(events, list):
        return None
    calls = []
    for event in events:
        if not isinstance(event, list) or not event or event[0] not in EVENT_KINDS:
            return None
        method, types = EVENT_KINDS[event[0]]
        if len(event) - 1 != len(types):
            return None
        arguments: list[Any] = []
        for value, kind in zip(event[1:], types):
            if kind is float:
                if type(value) not in (int, float) or not 0 <= value < 1e9:
                    return None
                arguments.append(float(value))
            elif not isinstance(value, str) or len(value) > MAX_LABEL:
                return None
            else:
                arguments.append(value)
        calls.append((method, tuple(arguments)))
    return calls, open_now


# -- the supervisor ---------------------------------------------------------------------------


@dataclass
class WorkerSlot:
    """One of the N places a worker process runs in; a restart reuses the slot."""

    index: int
    process: WorkerProcess | None = None
    started_at: float = 0.0
    #: The supervisor's reload generation when this worker started (it loaded the files then).
    generation: int = 0
    ready: bool = False
    first_ready: Deferred[None] = field(default_factory=Deferred)
    #: Its connections open now, as it last said (``--metrics``).
    open_connections: int = 0


class WorkerProcess(ProcessProtocol):
    """The supervisor's end of one worker: relays its log, tells when it serves and when it ends."""

    def __init__(self, supervisor: WorkerSupervisor, slot: WorkerSlot) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.pid = 0
        self.buffers = {1: b"", 2: b""}
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.pid = int(cast(Any, self.transport).pid)
        transport = cast(Any, self.transport)
        transport.writeToChild(0, WorkerSecrets.from_settings(self.supervisor.settings).to_line())
        transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self.buffers.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        self.buffers[childFD] = rest[-MAX_LINE:]
        for line in lines:
            self.line_received(childFD, line[:MAX_LINE].decode("utf-8", "replace"))

    def line_received(self, fd: int, line: str) -> None:
        if not line.strip():
            return
        if fd == 1 and line.startswith("{"):  # a WorkerEventsRelay line (log records are lists)
            events = decode_events(line)
            if events is not None:
                self.supervisor.worker_events(self.slot, *events, current=self.slot.process is self)
                return
        record = decode_record(line) if fd == 1 else None
        if record is None:  # stderr, or not one of our records: shown as it is
            log.warn("worker {tlsotp_worker} (pid {tlsotp_worker_pid}): {line}",
                     tlsotp_worker=self.slot.index, tlsotp_worker_pid=self.pid, line=line)
            return
        level, namespace, when, text, ready = record
        log.observer({
            "log_format": "worker {tlsotp_worker} (pid {tlsotp_worker_pid}): {tlsotp_worker_text}",
            "tlsotp_worker": self.slot.index,
            "tlsotp_worker_pid": self.pid,
            "tlsotp_worker_text": text,
            "log_level": level,
            "log_namespace": namespace,
            "log_system": f"worker {self.slot.index}",
            "log_time": when,
        })
        if ready:
            self.supervisor.worker_ready(self.slot)

    def processEnded(self, reason: Failure) -> None:
        status = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        how = f"signal {sig}" if sig else f"status {status}"
        self.ended.callback(None)
        self.supervisor.worker_ended(self.slot, self, how)

    def signal(self, name: str) -> None:
        try:
            cast(Any, self.transport).signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass


class WorkerSupervisor(BankServerService):
    """The bank server when ``settings.workers > 1``: does what is done once, serves nothing itself."""

    def __init__(
        self,
        settings: BankServerSettings,
        reactor: Any,
        on_fatal: Callable[[], None] | None = None,
        *,
        worker_command: Sequence[str],
        restart_policy: RestartPolicy = RestartPolicy(),
    ) -> None:
        super().__init__(settings, reactor, on_fatal=on_fatal)
        self.worker_command = list(worker_command)
        self.restart_policy = restart_policy
        self.slots: list[WorkerSlot] = []
        self.generation = 0
        self.family = socket.AF_INET
        self.listen_fd = -1
        self.restarter = Restarter(reactor, restart_policy, self.start_worker)
        self.stopping_workers = False

    def startService(self) -> None:
        self.slots = []
        self.stopping_workers = False
        self.restarter = Restarter(self.reactor, self.restart_policy, self.start_worker)
        super().startService()

    async def serve(self, port: IListeningPort) -> None:
        host = port.getHost()
        family = FAMILIES.get(type(host))
        fileno = getattr(port, "fileno", None)
        if family is None or fileno is None or not hasattr(port, "stopReading"):
            raise StartupError(f"--workers needs a socket endpoint (tcp:, tcp6:, unix:), not {self.settings.listen}")
        # The supervisor keeps the socket open (to hand it to restarted workers) but never accepts.
        cast(Any, port).stopReading()
        self.family, self.listen_fd = family, int(fileno())
        self.slots = [WorkerSlot(index) for index in range(1, self.settings.workers + 1)]
        for slot in self.slots:
            self.start_worker(slot.index)
        waiting = DeferredList([slot.first_ready for slot in self.slots], fireOnOneErrback=True, consumeErrors=True)
        try:
            await waiting
        except Exception as exc:
            first = getattr(exc, "subFailure", None)
            raise StartupError(first.getErrorMessage() if first is not None else str(exc)) from None

    def serving_how(self) -> str:
        pids = ", ".join(str(slot.process.pid) for slot in self.slots if slot.process is not None)
        return f", {len(self.slots)} worker processes (pids {pids})"

    def start_worker(self, index: int) -> None:
        if self.stopping_workers:
            return
        slot = self.slots[index - 1]
        config = WorkerConfig.from_settings(self.settings, index, self.family)
        process = WorkerProcess(self, slot)
        slot.process, slot.ready = process, False
        slot.started_at, slot.generation = time.monotonic(), self.generation
        self.reactor.spawnProcess(
            process, self.worker_command[0], [*self.worker_command, config.to_json()],
            env=worker_environment(), childFDs={0: "w", 1: "r", 2: "r", LISTEN_FD: self.listen_fd},
        )

    def worker_ready(self, slot: WorkerSlot) -> None:
        slot.ready = True
        if slot.generation < self.generation and slot.process is not None:
            slot.process.signal("HUP")  # a refresh happened while it was loading
        if not slot.first_ready.called:
            slot.first_ready.callback(None)

    def worker_events(
        self, slot: WorkerSlot, calls: list[tuple[str, tuple[Any, ...]]], open_now: int, *, current: bool
    ) -> None:
        """A worker's sessions' events (``--metrics``): counted by this process's ``BankMetrics``
        (the events of its own factory, which serves no session), whose open-connection gauge
        is then every worker's sum. The last lines of a worker already replaced in its slot
        (``current`` false) are counted too, but its connection count is no longer the slot's."""
        if self.factory is None:
            return
        events = self.factory.events
        for method, arguments in calls:
            getattr(events, method)(*arguments)
        if current:
            slot.open_connections = open_now
            self._count_open_connections()

    def _count_open_connections(self) -> None:
        """The supervisor's factory (serving nothing) shows every worker's last count, summed."""
        if self.factory is not None:
            self.factory.open_connections = sum(slot.open_connections for slot in self.slots)

    def worker_ended(self, slot: WorkerSlot, process: WorkerProcess, how: str) -> None:
        if slot.process is not process:
            return
        slot.process, slot.ready = None, False
        slot.open_connections = 0  # its connections died with it
        self._count_open_connections()
        if self.stopping_workers:
            return
        if not slot.first_ready.called:  # never served during start-up: the whole start fails
            slot.first_ready.errback(StartupError(f"worker {slot.index} exited with {how} before serving"))
            return
        ran_for = time.monotonic() - slot.started_at
        delay = self.restarter.died(slot.index, ran_for)
        log.warn(
            "worker {index} (pid {pid}) exited with {how} after {ran:.1f} s; restarting it in {delay:g} s",
            index=slot.index, pid=process.pid, how=how, ran=ran_for, delay=delay,
        )

    def reload_workers(self) -> None:
        """Tell every serving worker to reload the data dir's credentials and CRL."""
        self.generation += 1
        for slot in self.slots:
            if slot.ready and slot.process is not None:
                slot.generation = self.generation
                slot.process.signal("HUP")

    def use_crl(self, crl: x509.CertificateRevocationList) -> None:
        super().use_crl(crl)  # its own factory serves nothing, but /metrics and /health read it
        self.reload_workers()

    def use_credentials(self, credentials: Credentials) -> None:
        super().use_credentials(credentials)
        self.reload_workers()

    async def drain(self) -> None:
        self.stopping_workers = True
        self.restarter.cancel()
        running = [slot.process for slot in self.slots if slot.process is not None]
        for process in running:
            process.signal("TERM")
        if not running:
            return
        log.info("waiting for {n} worker(s) to drain and exit", n=len(running))
        ended = DeferredList([process.ended for process in running])
        deadline = self.reactor.callLater(self.settings.drain_timeout + STOP_GRACE, self._kill, running)
        await ended
        if deadline.active():
            deadline.cancel()

    def _kill(self, running: list[WorkerProcess]) -> None:
        left = [process for process in running if not process.ended.called]
        if left:
            log.warn("{n} worker(s) still running past the drain timeout: killing them", n=len(left))
        for process in left:
            process.signal("KILL")


def worker_environment() -> dict[str, str]:
    """This process's environment, with this tlsotp importable first (an editable checkout too)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# -- the worker -------------------------------------------------------------------------------


class BankWorker(service.Service):
    """One worker process's service: serves sessions on the inherited socket."""

    def __init__(
        self, config: WorkerConfig, reactor: Any, listen_fd: int = LISTEN_FD, secrets: WorkerSecrets = WorkerSecrets(),
        events: WorkerEventsRelay | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.listen_fd = listen_fd
        self.secrets = secrets
        self.events = events
        self.ticks: PeriodicTask | None = None
        self.factory: OTPServerFactory | None = None
        self.connections: ConnectionDrain | None = None
        self.authority: OTPStore | None = None
        self.port: IListeningPort | None = None
        self.ready: Deferred[None] = Deferred()

    def startService(self) -> None:
        service.Service.startService(self)  # type: ignore[no-untyped-call]
        Deferred.fromCoroutine(self._start()).chainDeferred(self.ready)

    def _load(self) -> tuple[Credentials, x509.CertificateRevocationList]:
        data_dir = self.config.data_dir
        try:
            credentials = load_credentials(data_dir)
            if credentials is None:
                raise StartupError(f"{data_dir} holds no certificate")
            crl = load_crl(data_dir / CRL_FILE)
            check_crl_signature(crl, credentials.root)
        except (PEMError, AlertError) as exc:
            raise StartupError(str(exc)) from None
        return credentials, crl

    async def _start(self) -> None:
        c = self.config
        credentials, crl = self._load()
        usable = suites_for_key(credentials.chain[0].public_key(), c.suite_list)
        if not usable:
            raise StartupError("none of the configured suites can be authenticated by this key")
        # The supervisor made (or migrated) the database and the pepper before starting any worker.
        self.authority = open_otp_store(
            self.reactor, c.data_dir, c.otp_policy, c.database(self.secrets), c.otp_pepper_file
        )
        await self.authority.open()
        self.connections = ConnectionDrain(self.reactor)
        self.factory = OTPServerFactory.from_options(
            ServerIdentity(credentials.key, credentials.chain, credentials.root), self.authority, usable, crl, c,
            events=self.events, connections=self.connections,
        )
        if self.events is not None:
            factory = self.factory
            self.events.open_connections = lambda: factory.open_connections
            relay = self.events

            async def tick() -> None:
                relay.tick()

            self.ticks = PeriodicTask(OPEN_CONNECTIONS_TICK, tick, clock=self.reactor, skip_first=True)
            self.ticks.startService()
        # adoptStreamPort duplicates the descriptor: close the inherited one.
        self.port = self.reactor.adoptStreamPort(self.listen_fd, c.family, self.factory)
        # One accept per wake-up, not Twisted's default of up to 100: every worker is woken on the
        # shared socket, so a burst is spread over them instead of drained by the first awake.
        cast(Any, self.port).numberAccepts = 1
        os.close(self.listen_fd)
        log.info(
            "worker {index} serving (pid {pid})", index=c.index, pid=os.getpid(), **{READY_FIELD: True},
        )

    def reload(self) -> None:
        """SIGHUP: the supervisor refreshed the CRL or renewed the certificate in the data dir."""
        if self.factory is None:
            return
        try:
            credentials, crl = self._load()
        except StartupError as exc:
            log.warn("reload failed, keeping the current certificate and CRL: {error}", error=str(exc))
            return
        if credentials.chain[0] != self.factory.identity.chain[0]:
            self.factory.identity = ServerIdentity(credentials.key, credentials.chain, credentials.root)
        if self.factory.crl is None or crl.public_bytes(Encoding.DER) != self.factory.crl.public_bytes(Encoding.DER):
            self.factory.crl = crl
        log.info("reloaded: certificate serial {serial}, CRL of {when}",  # hex, as the supervisor logs it
                 serial=f"{credentials.chain[0].serial_number:x}", when=str(crl.last_update_utc))

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.ticks is not None:
            await self.ticks.stopService()
        try:
            # Closes this process's descriptor only: Twisted never shuts down an adopted socket,
            # so a worker stopped alone leaves it to the others. (The supervisor's own port is
            # shut down when it stops, which stops every worker accepting at once.)
            if self.port is not None:
                await maybeDeferred(self.port.stopListening)
            if self.connections is not None:
                await self.connections.drain(self.config.drain_timeout)
        finally:
            # Last, and whatever happened above: the store's thread must end for the process to exit.
            if self.authority is not None:
                await self.authority.close()


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` when the parent (the supervisor) dies; elsewhere a no-op."""
    if sys.platform != "linux":
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)

