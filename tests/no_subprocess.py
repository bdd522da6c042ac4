"""Process creation forbidden in the fast tier: ``guard_tier`` for every run that imports
``tests.unit``, and ``python -m tests.no_subprocess MODULES`` for a whole run.

An audit hook (PEP 578) raises on every way Python starts a program (``subprocess``, ``os.fork``,
``os.posix_spawn``, ``os.exec*``, ``os.system``, ``os.spawn*``, ``pty.spawn``). ``guard_tier``
refuses only while a test of the tier is running (a trial test case of that package on the
stack: trial spins the reactor inside the test's own ``run``, so a spawn from a reactor callback
is caught too, and so is one from a thread while the test runs), so the process tier in the
same run goes on starting daemons; ``main`` refuses everywhere. A hook cannot be removed:
either holds until the process exits.
"""

from __future__ import annotations

import inspect
import sys
import threading

from twisted.trial.unittest import SynchronousTestCase

#: The audit events of process creation (https://docs.python.org/3/library/audit_events.html).
FORBIDDEN = frozenset({
    "subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system", "os.spawn", "pty.spawn",
})

#: The packages whose tests ``guard_tier`` has put under the hook.
GUARDED: set[str] = set()


class NoSubprocess(RuntimeError):
    """A test tried to start a process where none may be started."""


def forbid_processes(event: str, args: tuple[object, ...]) -> None:
    if event in FORBIDDEN:
        raise NoSubprocess(f"no subprocess in this tier: {event} {args[:2]!r}")


def running_test_module() -> str | None:
    """The module of the innermost trial test case on the calling stack, or of a test module
    being imported, if any; from another thread (a test's worker thread), the one on the main
    thread's stack, where trial runs it."""
    frame = inspect.currentframe()
    if threading.current_thread() is not threading.main_thread():
        frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, SynchronousTestCase):
            return type(candidate).__module__
        if frame.f_code.co_name == "<module>" and str(frame.f_globals.get("__name__", "")).startswith("tests."):
            return str(frame.f_globals["__name__"])
        frame = frame.f_back
    return None


def forbid_in_guarded_tiers(event: str, args: tuple[object, ...]) -> None:
    if event in FORBIDDEN:
        module = running_test_module() or ""
        if any(module == package or module.startswith(package + ".") for package in GUARDED):
            raise NoSubprocess(f"no subprocess in this tier ({module}): {event} {args[:2]!r}")


def guard_tier(package: str) -> None:
    """Forbid process creation to the tests of ``package`` in this process, from now on."""
    if not GUARDED:
        sys.addaudithook(forbid_in_guarded_tiers)
    GUARDED.add(package)


def main() -> None:
    from twisted.scripts.trial import run

    sys.addaudithook(forbid_processes)  # cannot be removed: holds until this process exits
    sys.argv[0] = "trial"
    run()


if __name__ == "__main__":
    main()
