"""systemd's notify protocol as the daemons speak it, against real AF_UNIX datagram sockets,
and ``--listen systemd:...`` refused in one line when no socket was passed."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase

from tests.test_ttp_fixtures import reactor
from tlsotp.services import readiness
from tlsotp.services.listen import NO_SYSTEMD_SOCKET, listen_endpoint


class NotifyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.patch(readiness, "log", Logger(observer=cast(ILogObserver, self.events.append)))
        self.patch(readiness, "_warned", False)
        self.patch(readiness, "_failed", False)
        saved = os.environ.get("NOTIFY_SOCKET")
        self.addCleanup(self.restore, saved)

    def restore(self, saved: str | None) -> None:
        if saved is None:
            os.environ.pop("NOTIFY_SOCKET", None)
        else:
            os.environ["NOTIFY_SOCKET"] = saved

    def supervisor(self, abstract: bool = False) -> socket.socket:
        """A socket where systemd would listen, named in $NOTIFY_SOCKET."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = f"tlsotp-test-{secrets.token_hex(8)}"
            sock.bind("\0" + name)
            os.environ["NOTIFY_SOCKET"] = "@" + name
        else:
            directory = tempfile.mkdtemp(prefix="tlsotp-notify-")  # short: a socket path has 108 bytes
            self.addCleanup(os.rmdir, directory)
            path = os.path.join(directory, "notify")
            sock.bind(path)
            self.addCleanup(os.unlink, path)
            os.environ["NOTIFY_SOCKET"] = path
        sock.settimeout(5)
        return sock

    def test_ready_with_its_status_in_one_datagram(self) -> None:
        sock = self.supervisor()
        self.assertTrue(readiness.notify_ready("listening on 127.0.0.1:7001"))
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=listening on 127.0.0.1:7001")

    def test_abstract_namespace_socket(self) -> None:
        sock = self.supervisor(abstract=True)
        self.assertTrue(readiness.notify_stopping())
        self.assertEqual(sock.recv(4096).split(b"\n")[0], b"STOPPING=1")

    def test_without_notify_socket_nothing_is_sent(self) -> None:
        os.environ.pop("NOTIFY_SOCKET", None)
        self.assertFalse(readiness.notify_ready("listening"))
        self.assertEqual(self.events, [])

    def test_a_status_cannot_add_fields(self) -> None:
        sock = self.supervisor()
        readiness.notify_failed("tlsotp-server cannot start: refused\nREADY=1\rMAINPID=1\x00" + "x" * 2000)
        lines = sock.recv(65536).decode().split("\n")
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("STATUS=tlsotp-server cannot start: refused READY=1 MAINPID=1"), lines)
        self.assertEqual(len(lines[0]), len("STATUS=") + readiness.MAX_STATUS)

    def test_stopping_after_a_failure_keeps_its_reason(self) -> None:
        sock = self.supervisor()
        readiness.notify_failed("tlsotp-ttp cannot start: cannot listen")
        sock.recv(4096)
        readiness.notify_stopping()
        self.assertEqual(sock.recv(4096), b"STOPPING=1")

    def test_a_vanished_socket_is_logged_once_and_never_raises(self) -> None:
        sock = self.supervisor()
        path = os.environ["NOTIFY_SOCKET"]
        sock.close()
        os.unlink(path)
        self.addCleanup(Path(path).touch)  # the cleanup above unlinks it again
        self.assertFalse(readiness.notify_ready("listening"))
        self.assertFalse(readiness.notify_stopping())
        self.assertEqual(len(self.events), 1, self.events)
        self.assertEqual(self.events[0]["log_level"].name, "warn")

    def test_an_address_that_is_no_socket_is_logged_not_raised(self) -> None:
        os.environ["NOTIFY_SOCKET"] = "vsock:2:1234"  # a transport this module does not speak
        self.assertFalse(readiness.notify_ready("listening"))
        self.assertEqual(len(self.events), 1, self.events)


class SystemdListenTests(SynchronousTestCase):
    def test_no_inherited_socket_is_a_value_error_with_the_reason(self) -> None:
        # This test process was not socket-activated: Twisted found no LISTEN_FDS.
        for description in ("systemd:domain=INET:index=0", "systemd:domain=INET:name=tlsotp-server"):
            with self.assertRaises(ValueError) as caught:
                listen_endpoint(reactor, description)
            self.assertEqual(str(caught.exception), NO_SYSTEMD_SOCKET)

    def test_other_bad_descriptions_keep_twisteds_reason(self) -> None:
        with self.assertRaises(ValueError) as caught:
            listen_endpoint(reactor, "systemd:domain=INET")
        self.assertIn("index or name", str(caught.exception))
        with self.assertRaises(ValueError):
            listen_endpoint(reactor, "tcp:notaport")
