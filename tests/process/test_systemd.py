"""What systemd does to a unit, done by hand to the real ``twistd -n`` daemons.

- ``Type=notify``: the test binds the AF_UNIX datagram socket systemd would, names it in the
  child's ``$NOTIFY_SOCKET``, and reads what the daemon says: ``READY=1`` once its port accepts
  connections, ``STOPPING=1`` on SIGTERM, a ``STATUS=`` with the reason (and exit status 1) when
  it cannot start.
- Socket activation: the test binds and listens on a TCP socket, and the child gets it as fd 3
  with ``LISTEN_FDS=1``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` set to its own pid (which only the
  child knows: a tiny wrapper sets it, then runs twistd in the same process), and ``--listen
  systemd:domain=INET:...``. A real client session then goes through those sockets.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from tests.process.test_daemon_drain import accept_backlog
from tests.processes import REPO, TLSOTP, TWISTD, Daemon, closed_port, kill_group, poll, subprocess_env
from tests.systemd_units import UNITS, env_file, exec_start
from tests.test_ttp_fixtures import mint_token
from tlsotp.commands import server_daemon
from tlsotp.pki.roles import Role
from tlsotp.ttp.ca import init_ca

WAIT_SECONDS = 30.0
SERVER_NAME = "bank.example"
CLIENT_NAME = "alice.example"
READY_STATUS = re.compile(r"^listening on 127\.0\.0\.1:(\d+)$")

#: Run first in the child, before twistd: the inherited socket becomes fd 3 (as systemd passes
#: it) and LISTEN_PID names this very process, which keeps its pid through the twistd run.
ACTIVATE = (
    "import os, sys; fd = int(sys.argv.pop(1)); os.dup2(fd, 3); fd == 3 or os.close(fd); "
    "os.environ['LISTEN_PID'] = str(os.getpid()); "
)


class NotifySocket:
    """The supervisor's end of ``$NOTIFY_SOCKET``: a path, or an abstract name (``@...``)."""

    def __init__(self, testcase: unittest.TestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.sock.close)
        if abstract:
            name = f"tlsotp-test-{secrets.token_hex(8)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            directory = tempfile.mkdtemp(prefix="tlsotp-sd-")  # short: a socket path has 108 bytes
            testcase.addCleanup(shutil.rmtree, directory, True)
            self.address = os.path.join(directory, "notify")
            self.sock.bind(self.address)
        self.messages: list[dict[str, str]] = []

    def receive_until(self, field: str, process: subprocess.Popen[bytes], seconds: float = WAIT_SECONDS) -> dict[str, str]:
        """Read datagrams until one carries ``field``; fail if the daemon exits or time runs out."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.messages:
                if field in message:
                    return message
            self.sock.settimeout(0.2)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if process.poll() is not None:
                    self.drain()
                    if not any(field in message for message in self.messages):
                        raise AssertionError(f"daemon exited {process.returncode} without {field}: {self.messages}") from None
                continue
            self.messages.append(parse(data))
        raise AssertionError(f"no {field} within {seconds} s: {self.messages}")

    def drain(self) -> list[dict[str, str]]:
        """Everything sent so far (call once the daemon has exited)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(parse(self.sock.recv(65536)))
        except BlockingIOError:
            pass
        return self.messages


def parse(datagram: bytes) -> dict[str, str]:
    lines = datagram.decode("utf-8").split("\n")
    return dict(line.split("=", 1) for line in lines)


class Twistd:
    """``twistd -n --pidfile= PLUGIN ...`` as a unit's ExecStart runs it, with the environment
    systemd gives (``NOTIFY_SOCKET``, and for socket activation fd 3 and ``LISTEN_*``).
    ``unit_argv`` is a unit's own ExecStart (its program is this interpreter's twistd); its
    stdout, the journal, goes to the log file."""

    def __init__(
        self, testcase: unittest.TestCase, workdir: Path, plugin: str, *args: str,
        notify: NotifySocket | None = None, activated: socket.socket | None = None, fd_name: str = "",
        name: str = "", unit_argv: list[str] | None = None, unit_env: dict[str, str] | None = None,
    ) -> None:
        name = name or plugin
        env = subprocess_env()
        for variable in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(variable, None)
        env.update(unit_env or {})
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.address
        self.log_path = workdir / f"{name}.log"
        self.stderr_path = workdir / f"{name}.stderr"
        if unit_argv is not None:
            argv = [*TWISTD, *unit_argv[1:]]
        else:
            argv = [*TWISTD, "-n", "--pidfile=", "--logfile", str(self.log_path), plugin, *args]
        pass_fds: tuple[int, ...] = ()
        if activated is not None:
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES=fd_name or f"{plugin}.socket")
            argv = [argv[0], "-c", ACTIVATE + argv[2], str(activated.fileno()), *argv[3:]]
            pass_fds = (activated.fileno(),)
        with self.stderr_path.open("wb") as stderr, self.log_path.open("ab") as stdout:
            self.process = subprocess.Popen(
                argv, cwd=REPO, env=env, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            )
        testcase.addCleanup(self.kill)

    def kill(self) -> None:
        kill_group(self.process.pid)
        self.process.wait()

    def wait(self) -> int:
        return self.process.wait(timeout=WAIT_SECONDS)

    def output(self) -> str:
        return "".join(p.read_text() for p in (self.stderr_path, self.log_path) if p.exists())


def accepts_connections(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return True


def listening_socket() -> socket.socket:
    """What a .socket unit holds: bound and listening before the service starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


class WorkdirMixin:
    def make_workdir(self, testcase: unittest.TestCase) -> Path:
        workdir = Path(testcase.mktemp()).resolve()
        workdir.mkdir(parents=True)
        return workdir


class NotifyTests(unittest.TestCase, WorkdirMixin):
    def setUp(self) -> None:
        self.workdir = self.make_workdir(self)

    def assertReadyAndStops(self, daemon: Twistd, notify: NotifySocket) -> None:
        ready = notify.receive_until("READY", daemon.process)
        self.assertEqual(ready["READY"], "1")
        match = READY_STATUS.match(ready.get("STATUS", ""))
        self.assertIsNotNone(match, ready)
        assert match is not None
        # READY=1 came after listening: the port accepts connections the moment it arrives.
        self.assertTrue(accepts_connections(int(match.group(1))))
        daemon.process.send_signal(signal.SIGTERM)
        stopping = notify.receive_until("STOPPING", daemon.process)
        self.assertEqual(stopping["STOPPING"], "1")
        self.assertEqual(daemon.wait(), -signal.SIGTERM, daemon.output())

    def test_ttp_ready_once_listening_then_stopping(self) -> None:
        init_ca(self.workdir / "ttp")
        notify = NotifySocket(self)
        ttp = Twistd(
            self, self.workdir, "tlsotp-ttp", "--data-dir", str(self.workdir / "ttp"),
            "--listen", "tcp:0:interface=127.0.0.1", notify=notify,
        )
        self.assertReadyAndStops(ttp, notify)

    def test_ttp_that_cannot_listen_says_why_and_exits_1(self) -> None:
        init_ca(self.workdir / "ttp")
        taken = listening_socket()
        self.addCleanup(taken.close)
        notify = NotifySocket(self)
        ttp = Twistd(
            self, self.workdir, "tlsotp-ttp", "--data-dir", str(self.workdir / "ttp"),
            "--listen", f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1", notify=notify,
        )
        self.assertEqual(ttp.wait(), 1, ttp.output())
        messages = notify.drain()
        self.assertFalse(any("READY" in m for m in messages), messages)
        # The status is the daemon's one refusal line ("tlsotp-ttp cannot start: cannot listen on
        # tcp:PORT:...: why", in its log).
        line = re.search(r"tlsotp-ttp cannot start: (cannot listen on tcp:\d+:.*)$", ttp.output(), re.MULTILINE)
        assert line is not None, ttp.output()
        self.assertEqual([m["STATUS"] for m in messages if "STATUS" in m], [f"tlsotp-ttp cannot start: {line.group(1)}"])

    def test_server_ready_after_enrolling_and_listening_then_stopping(self) -> None:
        ttp_dir = self.workdir / "ttp"
        ca = init_ca(ttp_dir)
        ttp = Daemon(self.workdir, "ttp", "tlsotp-ttp", "--data-dir", str(ttp_dir), "--listen", "tcp:0:interface=127.0.0.1")
        self.addCleanup(ttp.stop)
        ttp.wait_ready()
        token = str(mint_token(ttp_dir, SERVER_NAME, Role.SERVER))
        notify = NotifySocket(self, abstract=True)
        server = Twistd(
            self, self.workdir, "tlsotp-server", "--data-dir", str(self.workdir / "bank"), "--name", SERVER_NAME,
            "--listen", "tcp:0:interface=127.0.0.1", "--ttp", f"tcp:host=127.0.0.1:port={ttp.port}",
            "--ca-fingerprint", ca.fingerprint, "--token", token, notify=notify,
        )
        self.assertReadyAndStops(server, notify)

    def test_server_that_cannot_enroll_says_why_and_exits_1(self) -> None:
        notify = NotifySocket(self)
        server = Twistd(
            self, self.workdir, "tlsotp-server", "--data-dir", str(self.workdir / "bank"), "--name", SERVER_NAME,
            "--token", "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "--ca-fingerprint", "sha256:" + "ab" * 32, "--ttp", f"tcp:host=127.0.0.1:port={closed_port(self)}",
            "--timeout", "5", notify=notify,
        )
        self.assertEqual(server.wait(), 1, server.output())
        messages = notify.drain()
        self.assertFalse(any("READY" in m for m in messages), messages)
        statuses = [m["STATUS"] for m in messages if "STATUS" in m]
        self.assertTrue(statuses and statuses[0].startswith("tlsotp-server cannot start: "), messages)
        # The same reason as the log's one critical line.
        self.assertIn(statuses[0], server.output())

    def test_server_refused_before_the_reactor_runs_says_why(self) -> None:
        notify = NotifySocket(self)
        server = Twistd(
            self, self.workdir, "tlsotp-server", "--data-dir", str(self.workdir / "bank"), "--name", SERVER_NAME,
            notify=notify,
        )
        self.assertEqual(server.wait(), 1, server.output())
        # The status is the one line on stderr ("tlsotp-server: DIR holds no certificate yet: ...").
        line = server.stderr_path.read_text().strip()
        self.assertTrue(line.startswith(f"tlsotp-server: {self.workdir / 'bank'} holds no certificate yet"), line)
        self.assertEqual(notify.drain(), [{"STATUS": line.replace("tlsotp-server: ", "tlsotp-server cannot start: ", 1)}])


class SocketActivationTests(unittest.TestCase, WorkdirMixin):
    def test_a_client_session_through_sockets_systemd_passed_to_both_daemons(self) -> None:
        workdir = self.make_workdir(self)
        ttp_dir = workdir / "ttp"
        ca = init_ca(ttp_dir)
        ttp_socket, server_socket = listening_socket(), listening_socket()
        self.addCleanup(ttp_socket.close)
        self.addCleanup(server_socket.close)
        ttp_port, server_port = ttp_socket.getsockname()[1], server_socket.getsockname()[1]

        # The TTP finds its socket by name (FileDescriptorName=), the server by index.
        ttp_notify = NotifySocket(self)
        ttp = Twistd(
            self, workdir, "tlsotp-ttp", "--data-dir", str(ttp_dir), "--listen", "systemd:domain=INET:name=tlsotp-ttp",
            notify=ttp_notify, activated=ttp_socket, fd_name="tlsotp-ttp",
        )
        self.assertEqual(ttp_notify.receive_until("READY", ttp.process)["STATUS"], f"listening on 127.0.0.1:{ttp_port}")
        ttp_endpoint = f"tcp:host=127.0.0.1:port={ttp_port}"
        server_notify = NotifySocket(self)
        server = Twistd(
            self, workdir, "tlsotp-server", "--data-dir", str(workdir / "bank"), "--name", SERVER_NAME,
            "--listen", "systemd:domain=INET:index=0", "--ttp", ttp_endpoint, "--ca-fingerprint", ca.fingerprint,
            "--token", str(mint_token(ttp_dir, SERVER_NAME, Role.SERVER)),
            notify=server_notify, activated=server_socket,
        )
        ready = server_notify.receive_until("READY", server.process)
        self.assertEqual(ready["STATUS"], f"listening on 127.0.0.1:{server_port}")

        client = subprocess.run(
            [*TLSOTP, "client", "--data-dir", str(workdir / "alice"), "--name", CLIENT_NAME,
             "--token", str(mint_token(ttp_dir, CLIENT_NAME, Role.CLIENT)), "--ttp", ttp_endpoint,
             "--ca-fingerprint", ca.fingerprint, "--server", f"tcp:host=127.0.0.1:port={server_port}",
             "--server-name", SERVER_NAME, "--transaction", "Rs 10 to Bob"],
            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        self.assertEqual(client.returncode, 0, client.stderr + server.output())
        self.assertRegex(client.stdout, r"The OTP for transferring Rs 10 to Bob is \d{6}\.")

        # A restart refuses nobody: while no server runs, a client's connection waits in the
        # socket systemd holds, and the next server process serves it.
        server.process.send_signal(signal.SIGTERM)
        self.assertEqual(server.wait(), -signal.SIGTERM, server.output())
        waiting = subprocess.Popen(
            [*TLSOTP, "client", "--data-dir", str(workdir / "alice"), "--ttp", ttp_endpoint,
             "--server", f"tcp:host=127.0.0.1:port={server_port}", "--server-name", SERVER_NAME,
             "--transaction", "Rs 20 to Carol"],
            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )
        self.addCleanup(waiting.wait)
        self.addCleanup(kill_group, waiting.pid)
        self.assertTrue(poll(lambda: accept_backlog(server_port) >= 1, WAIT_SECONDS), "the client never connected")
        server_notify = NotifySocket(self)
        server = Twistd(
            self, workdir, "tlsotp-server", "--data-dir", str(workdir / "bank"), "--name", SERVER_NAME,
            "--listen", "systemd:domain=INET:index=0", "--ttp", ttp_endpoint,
            notify=server_notify, activated=server_socket, name="tlsotp-server-restarted",
        )
        server_notify.receive_until("READY", server.process)
        out, err = waiting.communicate(timeout=60)
        self.assertEqual(waiting.returncode, 0, err + server.output())
        self.assertRegex(out, r"The OTP for transferring Rs 20 to Carol is \d{6}\.")
        for daemon, notify in ((server, server_notify), (ttp, ttp_notify)):
            daemon.process.send_signal(signal.SIGTERM)
            notify.receive_until("STOPPING", daemon.process)
            self.assertEqual(daemon.wait(), -signal.SIGTERM, daemon.output())

    def test_no_socket_passed_is_one_line_and_exit_1(self) -> None:
        workdir = self.make_workdir(self)
        init_ca(workdir / "ttp")
        for plugin, args in (
            ("tlsotp-ttp", ["--data-dir", str(workdir / "ttp")]),
            ("tlsotp-server", ["--data-dir", str(workdir / "bank"), "--name", SERVER_NAME, "--token", "x.y",
                               "--ca-fingerprint", "sha256:" + "ab" * 32]),
        ):
            daemon = Twistd(self, workdir, plugin, *args, "--listen", "systemd:domain=INET:index=0")
            self.assertEqual(daemon.wait(), 1, daemon.output())
            self.assertEqual(
                daemon.stderr_path.read_text(),
                f"{plugin}: bad --listen endpoint 'systemd:domain=INET:index=0': no such socket passed by systemd "
                "to this process (start it through its .socket unit; it needs LISTEN_FDS, LISTEN_FDNAMES and "
                "LISTEN_PID set for it)\n",
            )


if sys.platform != "linux":  # pragma: no cover - abstract sockets, PR_SET_PDEATHSIG
    NotifyTests.skip = SocketActivationTests.skip = "systemd's protocols are Linux's"


class UnitsAsWrittenTests(unittest.TestCase, WorkdirMixin):
    """contrib/systemd's ExecStart lines run as they are, with what systemd would give them:
    the sockets, the notify socket, $STATE_DIRECTORY, the credentials, the environment file's
    variables (here with this test's values)."""

    def test_ttp_server_and_client_units_end_with_the_otp_in_a_private_file(self) -> None:
        if "token-file=" not in server_daemon.Options().longOpt:
            raise unittest.SkipTest("the units' --token-file is not in this branch yet (opsmisc adds it)")
        workdir = self.make_workdir(self)
        ttp_dir, bank_dir, alice_dir, credentials = (workdir / d for d in ("ttp", "bank", "alice", "credentials"))
        ca = init_ca(ttp_dir)
        credentials.mkdir(mode=0o700)
        ttp_socket, server_socket = listening_socket(), listening_socket()
        self.addCleanup(ttp_socket.close)
        self.addCleanup(server_socket.close)
        ttp_endpoint = f"tcp:host=127.0.0.1:port={ttp_socket.getsockname()[1]}"
        site = {"TLSOTP_TTP": ttp_endpoint, "TLSOTP_CA_FINGERPRINT": ca.fingerprint, "CREDENTIALS_DIRECTORY": str(credentials)}

        def run_unit(unit: str, data_dir: Path, **kwargs: Any) -> Twistd:
            values = {**env_file(UNITS / f"{unit}.env"), **site} if (UNITS / f"{unit}.env").exists() else dict(site)
            values["STATE_DIRECTORY"] = str(data_dir)
            argv = exec_start(UNITS / f"{unit}.service", values)
            return Twistd(self, workdir, unit, unit_argv=argv, unit_env=values, **kwargs)

        ttp_notify = NotifySocket(self)
        ttp = run_unit("tlsotp-ttp", ttp_dir, notify=ttp_notify, activated=ttp_socket)
        ttp_notify.receive_until("READY", ttp.process)

        server_token = str(mint_token(ttp_dir, "bank.example", Role.SERVER))
        (credentials / "token").write_text(server_token + "\n")
        site.update(TLSOTP_NAME="bank.example")
        server_notify = NotifySocket(self)
        server = run_unit("tlsotp-server", bank_dir, notify=server_notify, activated=server_socket)
        self.assertEqual(
            server_notify.receive_until("READY", server.process)["STATUS"],
            f"listening on 127.0.0.1:{server_socket.getsockname()[1]}",
        )
        # What ps shows of the server: no token.
        self.assertNotIn(server_token.encode(), Path(f"/proc/{server.process.pid}/cmdline").read_bytes())

        # The client unit, a oneshot: its exit status is the run's.
        (credentials / "token").write_text(str(mint_token(ttp_dir, "alice.example", Role.CLIENT)) + "\n")
        site.update(
            TLSOTP_NAME="alice.example", TLSOTP_SERVER_NAME="bank.example",
            TLSOTP_SERVER=f"tcp:host=127.0.0.1:port={server_socket.getsockname()[1]}",
        )
        client = run_unit("tlsotp-client", alice_dir)
        self.assertEqual(client.wait(), 0, client.output() + server.output())
        transaction = env_file(UNITS / "tlsotp-client.env")["TLSOTP_TRANSACTION"]
        answer = (alice_dir / "otp.txt").read_text()
        match = re.match(rf"The OTP for transferring {re.escape(transaction)} is (\d{{6}})\.", answer)
        self.assertIsNotNone(match, answer)
        assert match is not None
        self.assertEqual((alice_dir / "otp.txt").stat().st_mode & 0o777, 0o600)
        self.assertNotIn(match.group(1), client.output())  # the journal never sees the OTP
        for daemon, notify in ((server, server_notify), (ttp, ttp_notify)):
            daemon.process.send_signal(signal.SIGTERM)
            notify.receive_until("STOPPING", daemon.process)
            self.assertEqual(daemon.wait(), -signal.SIGTERM, daemon.output())
