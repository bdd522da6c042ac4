"""Running the project's real programs as subprocesses from tests: twistd and tlsotp.

Two rules hold for every process started through this module:

- **No port races.** A daemon listens on port 0 and the test reads the port the kernel chose from
  the daemon's own "serving on"/"listening on" log line (``Daemon``, ``listening_port``); no port
  is picked by binding and releasing it first. A test that needs a port where nothing listens
  holds one bound that never listens (``closed_port``).
- **Nothing outlives the test run.** The interpreter prelude of ``TWISTD``, ``TLSOTP`` and
  ``guarded`` makes the child its own process group (``setsid``) and asks Linux to SIGKILL it
  when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); a child whose parent is already
  gone exits at once. Cleanup kills the whole group (``kill_group``), so even a killed trial
  leaves no daemon behind. (Linux sends that signal when the *thread* that started the child
  ends: start children from the main thread, as trial's tests and the reactor do, not from a
  thread pool.)
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent

#: Run first in every child: its own session and process group, SIGKILL when this process dies.
#: ``prctl(1, 9)`` is PR_SET_PDEATHSIG with SIGKILL; the parent's pid is fixed when this module
#: is imported, so a child started after its parent died (reparented) exits at once.
_PRELUDE = (
    "import ctypes, os, sys; os.setsid(); "
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0) if sys.platform == 'linux' else None; "
    f"os.getppid() == {os.getpid()} or os._exit(70); "
)

#: argv that runs this interpreter's twistd, wherever its script was installed.
TWISTD = [sys.executable, "-c", _PRELUDE + "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]

#: argv that runs the tlsotp command from this checkout (as ``python -m tlsotp.commands.main``).
TLSOTP = [sys.executable, "-c", _PRELUDE + "import runpy; runpy.run_module('tlsotp.commands.main', run_name='__main__', alter_sys=True)"]


def guarded(argv: list[str]) -> list[str]:
    """``argv`` (any program) run under the same prelude: its own group, killed with its parent."""
    return [sys.executable, "-c", _PRELUDE + "os.execvp(sys.argv[1], sys.argv[1:])", *argv]


def subprocess_env() -> dict[str, str]:
    """The environment for a Python subprocess that must import this checkout and its plugins."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group a child of this module leads (its pid is the group's id)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def closed_port(testcase: SynchronousTestCase) -> int:
    """A loopback port where nothing listens, for the test's lifetime: held bound, never listening,
    so connecting is refused and no other process can take it meanwhile."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    testcase.addCleanup(s.close)
    return int(s.getsockname()[1])


#: What the daemons log once listening: "tlsotp-ttp serving on 127.0.0.1:PORT, ...",
#: "tlsotp-server NAME listening on 127.0.0.1:PORT, ..." (tlsotp.services.addresses.describe_address).
LISTENING = re.compile(r"\b(?:serving|listening) on \[?(?P<host>[0-9A-Fa-f.:]+?)\]?:(?P<port>\d+)\b")


def listening_port(log: str) -> int | None:
    """The port of the first "listening" line in a daemon's log, or None before it is there."""
    match = LISTENING.search(log)
    return int(match.group("port")) if match else None


#: What a daemon logs once its ``--metrics`` endpoint listens (``tlsotp.services.metrics``):
#: "tlsotp-server metrics and health at http://127.0.0.1:PORT/metrics and /health".
METRICS_AT = re.compile(r"\bmetrics and health at http://\[?(?P<host>[0-9A-Fa-f.:]+?)\]?:(?P<port>\d+)/metrics\b")


def metrics_port(log: str) -> int | None:
    """The port of a daemon's ``--metrics`` listener, from its log, or None before it is there."""
    match = METRICS_AT.search(log)
    return int(match.group("port")) if match else None


def listen_backlog(port: int) -> int | None:
    """How many connections wait in the accept queue of the IPv4 loopback socket listening on
    ``port`` (Linux: the listening socket's rx_queue in /proc/net/tcp), or None if none listens.
    The process tests and ``benchmarks.server``'s burst both read it here."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
            return int(fields[4].split(":")[1], 16)
    return None


def poll(condition: Callable[[], object], seconds: float, interval: float = 0.05) -> bool:
    """Call ``condition`` until it returns a true value or ``seconds`` pass; whether it did."""
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class Daemon:
    """A ``twistd -n`` subprocess logging to a file; its port is read from that log once it listens.

    Give it ``--listen tcp:0:interface=127.0.0.1`` (any options after the port too); ``wait_ready``
    waits for the daemon's listening line and sets ``port``.
    """

    STARTUP_SECONDS = 30.0

    def __init__(self, workdir: Path, name: str, plugin: str, *args: str) -> None:
        self.log_path = workdir / f"{name}.log"
        self.port = 0
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile", "", "--logfile", str(self.log_path), plugin, *args],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.STARTUP_SECONDS
        while time.monotonic() < deadline:
            port = listening_port(self.log())
            if port is not None:
                self.port = port
                return
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"daemon not listening after {self.STARTUP_SECONDS} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_for_log(self, text: str, seconds: float = 10.0) -> str:
        """The log once it contains ``text`` (a daemon writes its lines a moment after acting)."""
        poll(lambda: text in self.log(), seconds)
        return self.log()

    def stop(self) -> None:
        """SIGTERM (a clean stop), then SIGKILL for the whole group whatever happened."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.process.pid)
        self.process.wait()


#: argv that runs trial (as ``python -m twisted.trial``) under the same prelude.
TRIAL = [sys.executable, "-c", _PRELUDE + "from twisted.scripts.trial import run; sys.argv[0] = 'trial'; run()"]

#: argv that runs trial with process creation forbidden (tests/no_subprocess.py).
TRIAL_NO_SUBPROCESS = [sys.executable, "-c", _PRELUDE + "from tests.no_subprocess import main; main()"]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, dead but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
