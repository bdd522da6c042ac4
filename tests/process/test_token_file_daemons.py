"""Secrets off the command line (issue 9): a real bank server daemon enrolls with
``--token-file``, the token never shows in its ``/proc/PID/cmdline``, and ``tlsotp client``
reads its token from standard input with ``--token-file -``."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial import unittest

from tests.process.test_end_to_end import COMMAND_SECONDS, tlsotp
from tests.processes import REPO, TLSOTP, TWISTD, Daemon


class TokenFileDaemonTests(unittest.TestCase):
    def test_daemon_enrolls_from_a_token_file_and_its_argv_holds_no_token(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="tlsotp-token-file-"))
        self.addCleanup(shutil.rmtree, workdir, True)
        ttp_dir = workdir / "ttp"
        fingerprint = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(ttp_dir)).stdout)
        assert fingerprint
        ttp = Daemon(workdir, "ttp", "tlsotp-ttp", "--data-dir", str(ttp_dir), "--listen", "tcp:0:interface=127.0.0.1")
        self.addCleanup(ttp.stop)
        ttp.wait_ready()
        endpoint = f"tcp:host=127.0.0.1:port={ttp.port}"

        def token(name: str, role: str) -> str:
            out = tlsotp("ttp", "token", "--data-dir", str(ttp_dir), "--name", name, "--role", role).stdout
            return out.strip().splitlines()[-1].strip()

        server_token = token("bank.example", "server")
        token_file = workdir / "server-token"
        token_file.write_text(server_token + "\n")
        token_file.chmod(0o600)
        server = Daemon(
            workdir, "server", "tlsotp-server", "--data-dir", str(workdir / "bank"), "--name", "bank.example",
            "--listen", "tcp:0:interface=127.0.0.1", "--ttp", endpoint, "--ca-fingerprint", fingerprint.group(0),
            "--token-file", str(token_file),
        )
        self.addCleanup(server.stop)
        server.wait_ready()
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        self.assertIn(b"--token-file", cmdline)
        self.assertNotIn(server_token.encode(), cmdline)
        self.assertNotIn(server_token.split(".")[-1].encode(), cmdline)
        self.assertNotIn("--token on the command line", server.log())
        self.assertNotIn(server_token, server.log())

        client_token = token("alice.example", "client")
        result = subprocess.run(
            [*TLSOTP, "client", "--data-dir", str(workdir / "alice"), "--name", "alice.example", "--ttp", endpoint,
             "--ca-fingerprint", fingerprint.group(0), "--token-file", "-",
             "--server", f"tcp:host=127.0.0.1:port={server.port}", "--server-name", "bank.example"],
            cwd=REPO, capture_output=True, text=True, timeout=COMMAND_SECONDS, input=client_token + "\n",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("valid until", result.stdout)
        listing = tlsotp("ttp", "list", "--data-dir", str(ttp_dir)).stdout
        self.assertIn("bank.example", listing)
        self.assertIn("alice.example", listing)

        # The unsafe form still works, and the daemon says once in its log that ps shows it.
        carol_token = token("carol.example", "client")
        log_path = workdir / "carol.log"
        carol = subprocess.run(
            [*TWISTD, "-n", "--pidfile", "", "--logfile", str(log_path), "tlsotp-client", "--data-dir",
             str(workdir / "carol"), "--name", "carol.example", "--ttp", endpoint, "--ca-fingerprint", fingerprint.group(0),
             "--token", carol_token, "--server", f"tcp:host=127.0.0.1:port={server.port}", "--server-name", "bank.example"],
            cwd=REPO, capture_output=True, text=True, timeout=COMMAND_SECONDS, stdin=subprocess.DEVNULL,
        )
        log = log_path.read_text()
        self.assertEqual(carol.returncode, 0, log)
        self.assertEqual(log.count("--token on the command line is visible to every local user"), 1, log)
        self.assertNotIn(carol_token, log)
