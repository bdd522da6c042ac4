"""How the daemons end a process on purpose, with the exit status an operator expects.

twistd offers no way to set the exit status once the reactor runs, yet a server that cannot
enroll, or a one-shot client whose session failed, must exit non-zero for whoever supervises
it. After the reactor has shut down cleanly (services stopped, log lines written), the
process exits with the status; twistd treats the pidfile left behind as stale on next start.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn


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
