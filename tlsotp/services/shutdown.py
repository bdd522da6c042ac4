"""How the daemons end a process on purpose, with the exit status an operator expects.

twistd offers no way to set the exit status once the reactor runs, yet a server that cannot
enroll, or a one-shot client whose session failed, must exit non-zero for whoever supervises
it. After the reactor has shut down cleanly (services stopped, log lines written), the
process exits with the status; twistd treats the pidfile left behind as stale on next start.

One rule for every daemon: a start-up failure known before the reactor runs (bad options, no
CA, a damaged database, a TCP port in use for the TTP, which listens before twistd drops
privileges) is one line on stderr and exit 1 (``refuse_to_start``); one found once the reactor
runs (the bank server's enrollment, its CRL, its listen after both) is one critical log line and
exit 1 (``fail_late`` with ``stop_with_status``).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, NoReturn

from twisted.logger import Logger

log = Logger()


def refuse_to_start(program: str, message: str) -> NoReturn:
    """One line on stderr and exit 1 (twistd prints its whole usage for a UsageError)."""
    raise SystemExit(f"{program}: {message}")


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
    """A start-up failure found once the reactor runs (an enrollment refused, a listen that
    failed late): one critical line in the log, then ``on_fatal`` (the tap module's stops the
    process with status 1). Failures found before the reactor runs use ``refuse_to_start``."""
    log.critical("{program} cannot start: {error}", program=program, error=describe_startup_error(error))
    if on_fatal is not None:
        on_fatal()
