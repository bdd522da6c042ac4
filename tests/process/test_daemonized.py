"""The daemons run daemonized (plain ``twistd``, no ``-n``) as an operator runs them.

``twistd --pidfile P --logfile L tlsotp-ttp ...`` returns once start-up is over: exit 0 when the
daemon listens, 1 with the one-line reason on its stderr otherwise, and no pidfile left behind
on failure; ``kill $(cat P)`` stops it and removes the pidfile; a pidfile naming a live process
that is not one of our daemons is replaced; SIGUSR1 rotates the log (twistd's own rotation).

A daemonized process leaves its launcher's process group (that is what daemonizing is), so
the prelude of ``tests/processes.py`` cannot tie it to this test run: every test kills the pid
its pidfile names when it ends, whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from twisted.trial import unittest

from tests.process.test_daemon_drain import accept_backlog
from tests.processes import REPO, TLSOTP, TWISTD, alive, closed_port, guarded, kill_group, listening_port, poll, subprocess_env
from tests.test_ttp_fixtures import mint_token
from tlsotp.framing import Frame, NetstringDecoder, encode
from tlsotp.pki.roles import Role
from tlsotp.ttp import wire
from tlsotp.ttp.ca import init_ca

#: Bounds a launcher: on the old code a TTP that cannot listen made it wait forever.
LAUNCH_SECONDS = 30.0
WAIT_SECONDS = 15.0
SERVER_NAME = "bank.example"
CLIENT_NAME = "alice.example"
ANY_TOKEN = "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def kill_if_alive(pid: int) -> None:
    """SIGKILL for a daemonized process (not a group leader: twistd forks twice)."""
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


class Launched:
    """One daemonized twistd: what its launcher said, and where its pidfile and log are."""

    def __init__(self, testcase: unittest.SynchronousTestCase, workdir: Path, name: str, plugin: str, *args: str) -> None:
        self.pidfile = workdir / f"{name}.pid"
        self.log_path = workdir / f"{name}.log"
        self.pid: int | None = None
        testcase.addCleanup(self.kill)
        try:
            self.launcher = subprocess.run(
                [*TWISTD, "--pidfile", str(self.pidfile), "--logfile", str(self.log_path), plugin, *args],
                cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=LAUNCH_SECONDS,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"the launching twistd did not return within {LAUNCH_SECONDS:g} s:\n{self.log()}") from exc
        finally:
            self.pid = self.read_pid()
        #: The port it listens on (read now: a rotated log no longer holds the line).
        self.port = listening_port(self.log()) or 0

    def read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return self.pid

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        """What the operator does: ``kill $(cat pidfile)``; returns once the process is gone."""
        pid = int(self.pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        if not poll(lambda: not alive(pid), WAIT_SECONDS):
            raise AssertionError(f"daemon {pid} still running {WAIT_SECONDS:g} s after SIGTERM:\n{self.log()}")

    def kill(self) -> None:
        pid = self.read_pid()
        if pid is not None:
            kill_if_alive(pid)


class DaemonizedTestCase(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir()
        self.ttp_dir = self.workdir / "ttp"
        self.ca = init_ca(self.ttp_dir)

    def launch(self, name: str, plugin: str, *args: str) -> Launched:
        return Launched(self, self.workdir, name, plugin, *args)

    def launch_ttp(self, *extra: str, name: str = "ttp") -> Launched:
        return self.launch(name, "tlsotp-ttp", "--data-dir", str(self.ttp_dir), "--listen", "tcp:0:interface=127.0.0.1", *extra)

    def launch_server(self, ttp: str, *extra: str, token: str | None = None) -> Launched:
        token = token or str(mint_token(self.ttp_dir, SERVER_NAME, Role.SERVER))
        return self.launch(
            "server", "tlsotp-server", "--data-dir", str(self.workdir / "bank"), "--name", SERVER_NAME,
            "--ttp", ttp, "--ca-fingerprint", self.ca.fingerprint, "--token", token, *extra,
        )

    def assertStarted(self, daemon: Launched) -> None:
        self.assertEqual(daemon.launcher.returncode, 0, f"{daemon.launcher.stderr}\n{daemon.log()}")
        # Start-up is over when the launcher returns: already listening, the pidfile written.
        self.assertIsNotNone(listening_port(daemon.log()), daemon.log())
        self.assertIsNotNone(daemon.pid)
        assert daemon.pid is not None
        self.assertTrue(alive(daemon.pid))

    def assertRefused(self, daemon: Launched, line: str) -> None:
        """Exit 1, the one-line reason first on the launcher's stderr, no pidfile, no process."""
        self.assertEqual(daemon.launcher.returncode, 1, f"{daemon.launcher.stderr}\n{daemon.log()}")
        self.assertTrue(daemon.launcher.stderr.startswith(line), daemon.launcher.stderr)
        # twistd tells the launcher first, then removes the pidfile and exits: a moment later.
        self.assertTrue(poll(lambda: not daemon.pidfile.exists(), WAIT_SECONDS), daemon.log())
        self.assertNotIn("Traceback", daemon.log())
        self.assertEqual(daemon.log().count(" cannot start: "), 1, daemon.log())
        pid = daemon.pid
        if pid is not None:
            self.assertTrue(poll(lambda: not alive(pid), WAIT_SECONDS), daemon.log())

    def taken_port(self) -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        self.addCleanup(s.close)
        return int(s.getsockname()[1])

    def ttp_endpoint(self, ttp: Launched) -> str:
        return f"tcp:host=127.0.0.1:port={ttp.port}"


class StartAndStopTests(DaemonizedTestCase):
    def test_ttp_and_bank_server_daemonized_serve_a_session_and_stop_with_kill(self) -> None:
        ttp = self.launch_ttp()
        self.assertStarted(ttp)
        server = self.launch_server(self.ttp_endpoint(ttp), "--listen", "tcp:0:interface=127.0.0.1")
        self.assertStarted(server)  # it enrolled and fetched the CRL before its launcher returned
        session = subprocess.run(
            [*TLSOTP, "client", "--data-dir", str(self.workdir / "alice"), "--name", CLIENT_NAME,
             "--token", str(mint_token(self.ttp_dir, CLIENT_NAME, Role.CLIENT)), "--ca-fingerprint", self.ca.fingerprint,
             "--ttp", self.ttp_endpoint(ttp), "--server", f"tcp:host=127.0.0.1:port={server.port}",
             "--server-name", SERVER_NAME],
            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        self.assertEqual(session.returncode, 0, f"{session.stdout}\n{session.stderr}\n{server.log()}")
        self.assertRegex(session.stdout, r"The OTP .* is \d{6}\.")
        for daemon in (server, ttp):
            daemon.stop()
            self.assertFalse(daemon.pidfile.exists(), daemon.log())
            self.assertIn("Server Shut Down.", daemon.log())


class StartupFailureTests(DaemonizedTestCase):
    def test_ttp_port_in_use_fails_before_the_launcher_returns(self) -> None:
        port = self.taken_port()
        ttp = self.launch("ttp", "tlsotp-ttp", "--data-dir", str(self.ttp_dir), "--listen", f"tcp:{port}:interface=127.0.0.1")
        self.assertRefused(ttp, f"tlsotp-ttp: cannot listen on tcp:{port}:interface=127.0.0.1: ")

    def test_bank_server_with_the_ttp_unreachable_fails_before_the_launcher_returns(self) -> None:
        unreachable = f"tcp:host=127.0.0.1:port={closed_port(self)}"
        server = self.launch_server(unreachable, "--listen", "tcp:0:interface=127.0.0.1", "--timeout", "5", token=ANY_TOKEN)
        self.assertRefused(server, f"tlsotp-server: cannot connect to the TTP at {unreachable}: Connection refused")

    def test_bank_server_port_in_use_fails_before_the_launcher_returns(self) -> None:
        ttp = self.launch_ttp()
        self.assertStarted(ttp)
        port = self.taken_port()
        server = self.launch_server(self.ttp_endpoint(ttp), "--listen", f"tcp:{port}:interface=127.0.0.1")
        self.assertRefused(server, f"tlsotp-server: cannot listen on tcp:{port}:interface=127.0.0.1: ")

    def test_bank_server_with_a_silent_ttp_fails_within_its_timeout(self) -> None:
        silent = self.taken_port()  # listens, never accepts nor answers
        server = self.launch_server(
            f"tcp:host=127.0.0.1:port={silent}", "--listen", "tcp:0:interface=127.0.0.1", "--timeout", "1", token=ANY_TOKEN,
        )
        self.assertRefused(server, f"tlsotp-server: no reply from the TTP at tcp:host=127.0.0.1:port={silent} within 1 s")

    def test_kill_during_start_up_stops_it_and_the_launcher_exits_1(self) -> None:
        """``kill $(cat pidfile)`` while the server waits on a silent TTP (``--timeout 120``):
        start-up stops at once, the launcher says so and exits 1, the pidfile goes."""
        silent = self.taken_port()
        pidfile, log = self.workdir / "server.pid", self.workdir / "server.log"
        launcher = subprocess.Popen(
            [*TWISTD, "--pidfile", str(pidfile), "--logfile", str(log), "tlsotp-server",
             "--data-dir", str(self.workdir / "bank"), "--name", SERVER_NAME, "--ttp", f"tcp:host=127.0.0.1:port={silent}",
             "--ca-fingerprint", self.ca.fingerprint, "--token", ANY_TOKEN, "--listen", "tcp:0:interface=127.0.0.1",
             "--timeout", "120"],
            cwd=REPO, env=subprocess_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(kill_group, launcher.pid)
        self.assertTrue(poll(lambda: pidfile.exists() and pidfile.read_text(), WAIT_SECONDS), "no pidfile")
        pid = int(pidfile.read_text())
        self.addCleanup(kill_if_alive, pid)
        # Its connection waits in the silent port's accept queue: the server is in start-up.
        self.assertTrue(poll(lambda: accept_backlog(silent) > 0, WAIT_SECONDS), log.read_text())
        os.kill(pid, signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=WAIT_SECONDS)
        self.assertEqual(launcher.returncode, 1, stderr)
        self.assertTrue(stderr.startswith("tlsotp-server: stopped while starting\n"), stderr)
        self.assertTrue(poll(lambda: not alive(pid) and not pidfile.exists(), WAIT_SECONDS), log.read_text())
        self.assertEqual(log.read_text().count("tlsotp-server stopped while starting"), 1, log.read_text())
        self.assertNotIn("Traceback", log.read_text())

    def test_in_the_foreground_too_failure_removes_the_pidfile(self) -> None:
        """``twistd -n --pidfile P``: the same one log line and exit 1, and P removed."""
        unreachable = f"tcp:host=127.0.0.1:port={closed_port(self)}"
        pidfile, log = self.workdir / "server.pid", self.workdir / "server.log"
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile", str(pidfile), "--logfile", str(log), "tlsotp-server",
             "--data-dir", str(self.workdir / "bank"), "--name", SERVER_NAME, "--ttp", unreachable,
             "--ca-fingerprint", self.ca.fingerprint, "--token", ANY_TOKEN, "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=LAUNCH_SECONDS, stdin=subprocess.DEVNULL,
        )
        text = log.read_text()
        self.assertEqual(result.returncode, 1, text)
        self.assertEqual(text.count("tlsotp-server cannot start: cannot connect to the TTP"), 1, text)
        self.assertNotIn("Traceback", text + result.stderr)
        self.assertFalse(pidfile.exists())


class PidfileTests(DaemonizedTestCase):
    def test_a_pidfile_naming_a_live_process_that_is_not_ours_is_replaced(self) -> None:
        """After a reboot the pid in a stale pidfile may belong to another program: the daemon
        starts anyway, over that pidfile, and the other program is left alone."""
        other = subprocess.Popen(guarded(["sleep", "60"]), stdin=subprocess.DEVNULL)
        self.addCleanup(other.wait)
        self.addCleanup(kill_group, other.pid)
        pidfile = self.workdir / "ttp.pid"
        pidfile.write_text(str(other.pid))
        ttp = self.launch_ttp()
        self.assertStarted(ttp)
        self.assertNotEqual(ttp.pid, other.pid)
        self.assertIn(f"replacing the stale pidfile {pidfile}: process {other.pid} is not a tlsotp daemon", ttp.log())
        self.assertIsNone(other.poll())

    def test_a_pidfile_naming_a_running_daemon_of_ours_still_refuses_a_second_one(self) -> None:
        first = self.launch_ttp()
        self.assertStarted(first)
        second = self.launch_ttp(name="ttp")  # the same pidfile
        self.assertEqual(second.launcher.returncode, 1, second.launcher.stderr)
        self.assertIn(f"Another twistd server is running, PID {first.pid}", second.launcher.stderr)
        assert first.pid is not None
        self.assertTrue(alive(first.pid))


class LogRotationTests(DaemonizedTestCase):
    def ask_for_the_crl(self, ttp: Launched) -> None:
        """One request the TTP logs a line for."""
        with socket.create_connection(("127.0.0.1", ttp.port), timeout=10) as s:
            s.sendall(encode(wire.encode(wire.CRLRequest())))
            decoder = NetstringDecoder(wire.MAX_REPLY_LENGTH)
            while (data := s.recv(65536)):
                decoder.receive_data(data)
        frame = decoder.next_event()
        assert isinstance(frame, Frame), frame
        self.assertIsInstance(wire.decode_reply(frame.payload), wire.CRLReply)

    def test_sigusr1_rotates_the_log_to_dot_1_and_new_lines_go_to_a_new_file(self) -> None:
        ttp = self.launch_ttp()
        self.assertStarted(ttp)
        self.ask_for_the_crl(ttp)
        self.assertTrue(poll(lambda: "served CRL number" in ttp.log(), WAIT_SECONDS), ttp.log())
        assert ttp.pid is not None
        os.kill(ttp.pid, signal.SIGUSR1)
        rotated = ttp.log_path.with_name(ttp.log_path.name + ".1")
        self.assertTrue(poll(rotated.exists, WAIT_SECONDS), ttp.log())
        old = rotated.read_text()  # closed before it was renamed: complete
        self.assertIn("serving on", old)
        self.ask_for_the_crl(ttp)
        self.assertTrue(poll(lambda: "served CRL number" in ttp.log(), WAIT_SECONDS), ttp.log())
        self.assertNotIn("serving on", ttp.log())  # a new file: only what came after the signal
        self.assertEqual(rotated.read_text(), old)  # the old file gets nothing more
