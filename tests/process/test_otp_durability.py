"""An OTP a client received survives ``kill -9`` of the bank server (issue 12, group commit).

The server answers a request only after the group transaction holding its OTP is committed
(WAL, ``synchronous=FULL``); so killing the real ``twistd -n tlsotp-server`` with SIGKILL the
moment the client has printed its OTP, then starting it again on the same data dir, must leave
that OTP confirmable.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from twisted.trial import unittest

from tests.process.test_end_to_end import OTP_LINE, tlsotp
from tests.processes import Daemon, kill_group

SERVER = "bank.example"
CLIENT = "alice.example"


class KillNineTests(unittest.SynchronousTestCase):
    def test_a_received_otp_survives_sigkill_of_the_server(self) -> None:
        work = Path(self.mktemp()).resolve()  # absolute: the daemons run in the repo's directory
        work.mkdir(parents=True)
        ttp_dir = work / "ttp"
        fingerprint = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(ttp_dir)).stdout)
        assert fingerprint is not None
        pin = fingerprint.group(0)

        def token(name: str, role: str) -> str:
            out = tlsotp("ttp", "token", "--data-dir", str(ttp_dir), "--name", name, "--role", role).stdout
            return out.strip().splitlines()[-1].strip()

        ttp = Daemon(work, "ttp", "tlsotp-ttp", "--data-dir", str(ttp_dir), "--listen", "tcp:0:interface=127.0.0.1")
        self.addCleanup(ttp.stop)
        ttp.wait_ready()
        ttp_endpoint = f"tcp:host=127.0.0.1:port={ttp.port}"
        common = ["--data-dir", str(work / "bank"), "--name", SERVER, "--listen", "tcp:0:interface=127.0.0.1",
                  "--ttp", ttp_endpoint, "--ca-fingerprint", pin]
        server = Daemon(work, "bank-1", "tlsotp-server", *common, "--token", token(SERVER, "server"))
        self.addCleanup(server.stop)
        server.wait_ready()
        tlsotp("enroll", "--data-dir", str(work / "alice"), "--ttp", ttp_endpoint, "--ca-fingerprint", pin,
               "--token", token(CLIENT, "client"), "--name", CLIENT, "--role", "client")

        def client(port: int, *args: str) -> str:
            return tlsotp("client", "--data-dir", str(work / "alice"), "--ttp", ttp_endpoint,
                          "--server", f"tcp:host=127.0.0.1:port={port}", "--server-name", SERVER, *args).stdout

        transaction = "Rs 500 to Bob"
        match = OTP_LINE.search(client(server.port, "--transaction", transaction))
        assert match is not None
        kill_group(server.process.pid, signal.SIGKILL)  # no clean stop: nothing flushed after the answer
        self.assertEqual(server.process.wait(timeout=30), -signal.SIGKILL)

        restarted = Daemon(work, "bank-2", "tlsotp-server", *common)
        self.addCleanup(restarted.stop)
        restarted.wait_ready()
        confirmed = client(restarted.port, "--transaction", transaction, "--confirm", match.group("code"))
        self.assertIn("OTP accepted", confirmed)
