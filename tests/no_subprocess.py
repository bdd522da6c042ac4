"""Run trial with process creation forbidden: ``python -m tests.no_subprocess tests.unit``.

An audit hook (PEP 578) raises on every way Python starts a program (``subprocess``, ``os.fork``,
``os.posix_spawn``, ``os.exec*``, ``os.system``, ``os.spawn*``, ``pty.spawn``), so a test of the
fast tier that tries to start one fails with ``NoSubprocess``. The process tier runs this module
over ``tests.unit`` to keep that tier free of subprocesses.
"""

from __future__ import annotations

import sys

#: The audit events of process creation (https://docs.python.org/3/library/audit_events.html).
FORBIDDEN = frozenset({
    "subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system", "os.spawn", "pty.spawn",
})


class NoSubprocess(RuntimeError):
    """A test tried to start a process where none may be started."""


def forbid_processes(event: str, args: tuple[object, ...]) -> None:
    if event in FORBIDDEN:
        raise NoSubprocess(f"no subprocess in this tier: {event} {args[:2]!r}")


def main() -> None:
    from twisted.scripts.trial import run

    sys.addaudithook(forbid_processes)  # cannot be removed: holds until this process exits
    sys.argv[0] = "trial"
    run()


if __name__ == "__main__":
    main()
