"""The test suite's own rules about processes: the fast tier starts none, and a killed trial run
leaves no daemon behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from twisted.trial import unittest

from tests.processes import (
    REPO,
    TRIAL,
    TRIAL_NO_SUBPROCESS,
    Daemon,
    alive,
    closed_port,
    kill_group,
    listening_port,
    poll,
    subprocess_env,
)
from tlsotp.ttp.ca import init_ca

WAIT_SECONDS = 60.0


def run_trial(argv: list[str], *modules: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv, *modules], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


class FastTierTests(unittest.SynchronousTestCase):
    """The fast tier guards itself in every run that imports it (``tests/no_subprocess.py``,
    ``guard_tier``; checked inside it by ``tests/unit/test_no_subprocess_guard.py``), which
    replaced running it a second time, 37 s, under the whole-process guard below."""

    def test_the_guard_catches_a_test_that_starts_a_process(self) -> None:
        """The same guard over a test that runs ``tlsotp``: it fails, naming the guard."""
        temp = str(Path(self.mktemp()).resolve())
        result = run_trial(TRIAL_NO_SUBPROCESS, "--temp-directory", temp, "tests.process.test_names_subprocess", timeout=WAIT_SECONDS)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("no subprocess in this tier: subprocess.Popen", result.stdout)


class KilledTrialTests(unittest.SynchronousTestCase):
    def test_a_daemon_dies_with_the_trial_that_started_it(self) -> None:
        """SIGKILL a trial run (no cleanup, no atexit can run) while its test holds a daemon."""
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        env = {**subprocess_env(), "TLSOTP_ORPHAN_DIR": str(workdir)}
        inner = subprocess.Popen(
            [*TRIAL, "--temp-directory", str(workdir / "_trial_temp"), "tests.process.orphan_fixture"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

        def stop_inner() -> None:
            kill_group(inner.pid)
            inner.wait()
            if inner.stdout:
                inner.stdout.close()

        self.addCleanup(stop_inner)
        pidfile = workdir / "daemon.pid"
        started = poll(lambda: pidfile.exists() or inner.poll() is not None, WAIT_SECONDS)
        if not pidfile.exists():
            kill_group(inner.pid)
            output = inner.stdout.read() if inner.stdout else b""
            self.fail(f"the inner trial started no daemon (waited: {started}):\n{output.decode(errors='replace')[-5000:]}")
        daemon = int(pidfile.read_text())

        def kill_daemon() -> None:  # only matters if this test fails: the daemon should be gone by then
            if alive(daemon):
                kill_group(daemon)
                os.kill(daemon, signal.SIGKILL)

        self.addCleanup(kill_daemon)
        self.assertTrue(alive(daemon))
        os.kill(inner.pid, signal.SIGKILL)  # the trial process only, not its group
        inner.wait()
        self.assertTrue(poll(lambda: not alive(daemon), 15), f"daemon {daemon} outlived the killed trial run")


class PortTests(unittest.SynchronousTestCase):
    def test_a_daemon_on_port_0_reports_the_port_it_got(self) -> None:
        """No port is chosen for the daemon: it listens on port 0 and its log line names the port."""
        workdir = Path(self.mktemp()).resolve()
        init_ca(workdir / "ttp")
        daemon = Daemon(workdir, "ttp", "tlsotp-ttp", "--data-dir", str(workdir / "ttp"), "--listen", "tcp:0:interface=127.0.0.1")
        self.addCleanup(daemon.stop)
        daemon.wait_ready()
        self.assertNotEqual(daemon.port, 0)
        self.assertEqual(listening_port(daemon.log()), daemon.port)
        socket.create_connection(("127.0.0.1", daemon.port), timeout=10).close()  # that port is the daemon's

    def test_a_closed_port_refuses_connections_while_held(self) -> None:
        port = closed_port(self)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)
        with socket.socket() as other, self.assertRaises(OSError):
            other.bind(("127.0.0.1", port))  # held: nobody else can take it meanwhile
