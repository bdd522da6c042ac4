"""Real daemons take the duration syntax on their duration options (issue 9: ``--otp-ttl 5m``
used to fail with "invalid literal for int()")."""

from __future__ import annotations

import datetime
import re
import shutil
import tempfile
from pathlib import Path

from twisted.trial import unittest

from tests.process.test_end_to_end import tlsotp
from tests.processes import Daemon


class DurationDaemonTests(unittest.TestCase):
    def test_otp_ttl_in_minutes_reaches_the_issued_otp(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="tlsotp-durations-"))
        self.addCleanup(shutil.rmtree, workdir, True)
        ttp_dir = workdir / "ttp"
        fingerprint = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(ttp_dir)).stdout)
        assert fingerprint
        ttp = Daemon(workdir, "ttp", "tlsotp-ttp", "--data-dir", str(ttp_dir), "--listen", "tcp:0:interface=127.0.0.1",
                     "--crl-hours", "1d", "--cert-days", "168h", "--timeout", "30s", "--drain-timeout", "5s")
        self.addCleanup(ttp.stop)
        ttp.wait_ready()
        endpoint = f"tcp:host=127.0.0.1:port={ttp.port}"

        def token(name: str, role: str) -> str:
            out = tlsotp("ttp", "token", "--data-dir", str(ttp_dir), "--name", name, "--role", role).stdout
            return out.strip().splitlines()[-1].strip()

        server = Daemon(
            workdir, "server", "tlsotp-server", "--data-dir", str(workdir / "bank"), "--name", "bank.example",
            "--listen", "tcp:0:interface=127.0.0.1", "--ttp", endpoint, "--ca-fingerprint", fingerprint.group(0),
            "--token", token("bank.example", "server"), "--otp-ttl", "7m", "--crl-refresh", "5m",
            "--renew-check", "1h", "--renew-before", "2d", "--first-message-timeout", "10s", "--drain-timeout", "5s",
        )
        self.addCleanup(server.stop)
        server.wait_ready()
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        out = tlsotp(
            "client", "--data-dir", str(workdir / "alice"), "--name", "alice.example", "--ttp", endpoint,
            "--ca-fingerprint", fingerprint.group(0), "--token", token("alice.example", "client"),
            "--server", f"tcp:host=127.0.0.1:port={server.port}", "--server-name", "bank.example", "--timeout", "1m",
        ).stdout
        after = datetime.datetime.now(datetime.timezone.utc)
        until = re.search(r"valid until (\S+ \S+) UTC", out)
        assert until, out
        expires = datetime.datetime.strptime(until.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
        # 7 minutes from the moment it was issued, somewhere between before and after.
        self.assertGreaterEqual(expires, before + datetime.timedelta(minutes=7) - datetime.timedelta(seconds=1))
        self.assertLessEqual(expires, after + datetime.timedelta(minutes=7))
