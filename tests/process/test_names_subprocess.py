"""``tlsotp ttp token`` refuses a name with a control character, as a user sees it (a subprocess).

Split from ``tests/unit/test_names.py`` so the fast tier spawns nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from twisted.trial import unittest

from tests.processes import REPO, TLSOTP, subprocess_env


class TokenCommandTests(unittest.TestCase):
    def test_ttp_token_refuses_a_newline_name(self) -> None:
        data_dir = Path(self.mktemp()).resolve() / "ttp"

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*TLSOTP, *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                timeout=60, stdin=subprocess.DEVNULL,
            )

        self.assertEqual(run("ttp", "init", "--data-dir", str(data_dir)).returncode, 0)
        for name in ("bank\n.example", "bank.example\n"):
            result = run("ttp", "token", "--data-dir", str(data_dir), "--name", name, "--role", "server")
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(result.stdout, "")
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn("control character", result.stderr)
