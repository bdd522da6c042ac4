"""How the daemons end a process on purpose, with the exit status an operator expects.

One rule for every daemon: start-up succeeds or fails before twistd's launcher returns, with
the right exit status, daemonized or not (``twistd -n``).

- A failure known while parsing options (bad options, no CA, a damaged database) is one line
  on stderr and exit 1 (``refuse_to_start``); twistd has written no pidfile yet.
- A failure found in ``privilegedStartService``/``startService`` (a port in use, the TTP
  unreachable for the bank server's enrollment or first CRL) raises ``StartupFailed``
  (``startup_failed``): one critical log line, and twistd does the rest. Daemonized, twistd's
  launcher waits on its status pipe for the outcome of those two calls, so it reports the
  failure and exits 1 instead of 0; the pidfile is removed in both modes. The services
  therefore do everything that can fail at start inside those two calls, before the reactor runs.
- Daemonized, the launcher only prints twistd's own truncated "An error has occurred" line;
  ``keep_launcher_stderr`` (the tap's ``makeService``, before twistd forks) keeps a copy of
  the launcher's stderr so that the daemon writes its one-line reason there first, then closes
  it once start-up is over (``startup_done``), so the launcher's stderr is never held open.
- A failure once the reactor runs (an endpoint that fails late) is one critical log line and
  exit 1 (``fail_late`` with ``stop_with_status``): twistd offers no way to set the exit status
  once the reactor runs, so the process exits with it after the reactor has shut down.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, NoReturn

from twisted.logger import Logger

from tlsotp.services import readiness

log = Logger()

#: (the pid that kept it, the fd) of the launcher's stderr, until start-up is over.
_launcher_stderr: list[tuple[int, int]] = []


class StartupFailed(SystemExit, Exception):
    """A daemon that cannot start, raised from ``privilegedStartService`` or ``startService``.

    Both bases on purpose. twistd handles an ``Exception`` from start-up: it writes it to its
    status pipe (daemonized: the launcher exits 1), removes the pidfile, and re-raises; the
    interpreter then ends the process as for any ``SystemExit``, with ``code`` and no
    traceback (``twistd -n`` too). Its text is the one line the operator sees.
    """

    def __init__(self, program: str, reason: str, status: int = 1) -> None:
        super().__init__(status)
        self.program = program
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.program}: {self.reason}"


def refuse_to_start(program: str, message: str) -> NoReturn:
    """One line on stderr and exit 1 (twistd prints its whole usage for a UsageError)."""
    readiness.notify_failed(f"{program} cannot start: {message}")
    raise SystemExit(f"{program}: {message}")


def keep_launcher_stderr() -> None:
    """Keep a copy of this process's stderr (call it before twistd daemonizes), for a start-up
    failure to be told to whoever launched twistd; ``startup_done`` closes it."""
    if _launcher_stderr:
        return
    try:
        fd = os.dup(2)
    except OSError:  # no stderr at all: nothing to tell
        return
    _launcher_stderr.append((os.getpid(), fd))


def startup_done() -> None:
    """Start-up is over (either way): let go of the launcher's stderr."""
    while _launcher_stderr:
        _, fd = _launcher_stderr.pop()
        try:
            os.close(fd)
        except OSError:
            pass


def _tell_launcher(line: str) -> None:
    for pid, fd in _launcher_stderr:
        if pid != os.getpid():  # daemonized: the launcher's stderr is no longer ours
            try:
                os.write(fd, (line + "\n").encode(errors="backslashreplace"))
            except OSError:
                pass


def startup_failed(program: str, error: BaseException | str) -> StartupFailed:
    """The exception to raise when start-up fails: the one line is logged (critical) and,
    daemonized, written to the launcher's stderr."""
    reason = error if isinstance(error, str) else describe_startup_error(error)
    log.critical("{program} cannot start: {error}", program=program, error=reason)
    readiness.notify_failed(f"{program} cannot start: {reason}")
    failed = StartupFailed(program, reason)
    _tell_launcher(str(failed))
    startup_done()
    return failed


def stopped_while_starting(program: str) -> StartupFailed:
    """SIGTERM (or SIGINT) before start-up was over: a stop the operator asked for, status 0
    (daemonized, the launcher still exits 1: the daemon never started)."""
    log.info("{program} stopped while starting", program=program)
    stopped = StartupFailed(program, "stopped while starting", status=0)
    _tell_launcher(str(stopped))
    startup_done()
    return stopped


def _exit_now(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def stop_with_status(reactor: Any, status: int) -> None:
    if status:
        reactor.addSystemEventTrigger("after", "shutdown", _exit_now, status)
    if reactor.running:
        reactor.stop()
    else:  # a failure found while twistd starts the services, before the reactor runs
        reactor.callWhenRunning(reactor.stop)


def describe_startup_error(error: BaseException) -> str:
    """One line: our typed errors speak for themselves; anything else also names its type."""
    if isinstance(error, (ValueError, OSError, ConnectionError)) or type(error).__module__.startswith("tlsotp"):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"


def fail_late(program: str, error: BaseException, on_fatal: Callable[[], None] | None) -> None:
    """A start-up failure found once the reactor runs (an endpoint that fails late, or a
    service started by an embedder with its reactor running): one critical line in the log,
    then ``on_fatal`` (the tap module's stops the process with status 1)."""
    log.critical("{program} cannot start: {error}", program=program, error=describe_startup_error(error))
    readiness.notify_failed(f"{program} cannot start: {describe_startup_error(error)}")
    if on_fatal is not None:
        on_fatal()
