"""The ``tlsotp`` command as a user runs it: ``python -m tlsotp.commands.main`` as a subprocess.

Split from ``tests/unit/test_cli_ttp.py`` (the in-process command tests) so the fast tier spawns nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from twisted.trial import unittest

from tests.processes import TLSOTP, subprocess_env


class SubprocessTests(unittest.TestCase):
    """What a user sees from ``python -m tlsotp.commands.main``: codes, single lines, no tracebacks."""

    def tlsotp(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*TLSOTP, *args], cwd=self.cwd, env=subprocess_env(),
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    def setUp(self) -> None:
        self.cwd = Path(self.mktemp()).resolve()
        self.cwd.mkdir()

    def assertOneLine(self, result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
        self.assertEqual(result.returncode, code, result)
        self.assertEqual(result.stdout, "")
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn(text, result.stderr)

    def test_exit_codes(self) -> None:
        self.assertOneLine(self.tlsotp(), 2, "tlsotp: error: choose a command")
        self.assertOneLine(self.tlsotp("ttp", "token", "--data-dir", "d"), 2, "--name and --role are required")
        init = self.tlsotp("ttp", "init", "--data-dir", "ttp")
        self.assertEqual(init.returncode, 0, init)
        self.assertRegex(init.stdout, r"^sha256:[0-9a-f]{64}\n$")
        self.assertOneLine(self.tlsotp("ttp", "init", "--data-dir", "ttp"), 1, "refusing to overwrite")
        token = self.tlsotp("ttp", "token", "--data-dir", "ttp", "--name", "bank.example", "--role", "server").stdout.strip()
        self.assertOneLine(
            self.tlsotp("enroll", "--data-dir", "bank", "--ttp", "tcp:host=127.0.0.1:port=1", "--ca-cert", "ttp/ca.pem",
                        "--token", token, "--name", "bank.example", "--role", "server"),
            1, "tlsotp enroll: cannot connect to the TTP",
        )
        help_text = self.tlsotp("ttp", "--help")
        self.assertEqual(help_text.returncode, 0)
        self.assertIn("Exit codes: 0 success, 1 refused or failed", " ".join(help_text.stdout.split()))
