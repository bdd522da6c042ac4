"""What users expect of a command: ``python -m tlsotp``, ``--version`` saying tlsotp's version,
and long options abbreviated to any unique prefix (getopt's rule) in every subcommand."""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import tlsotp
from tests.processes import REPO, subprocess_env
from tlsotp.commands import common
from tlsotp.commands import main as cli
from tlsotp.commands.common import options_first

PYTHON_M_TLSOTP = [sys.executable, "-m", "tlsotp"]


class AbbreviationTests(SynchronousTestCase):
    """An abbreviated option keeps its value, whatever the subcommand and wherever the positionals."""

    def test_ttp_commands(self) -> None:
        # --data-d, not --dat: the store commands also take --database, so --dat is ambiguous there.
        revoke = cli.parse(["ttp", "revoke", "--data-d", "ttpdir", "01", "--reas", "key-compromise"])
        self.assertEqual(revoke["data-dir"], Path("ttpdir"))
        self.assertEqual(revoke["reason"].name, "key_compromise")
        revoke_first = cli.parse(["ttp", "revoke", "01", "--data-", "ttpdir"])
        self.assertEqual(revoke_first["data-dir"], Path("ttpdir"))
        token = cli.parse(["ttp", "token", "--data-d", "ttpdir", "--na", "bank.example", "--rol", "server", "--tt", "2h"])
        self.assertEqual((token["data-dir"], token["name"]), (Path("ttpdir"), "bank.example"))
        self.assertEqual(token["ttl"].total_seconds(), 7200)
        init = cli.parse(["ttp", "init", "--data-d", "ttpdir", "--subj", "Test root", "--day", "30"])
        self.assertEqual((init["subject"], init["days"]), ("Test root", 30))
        listing = cli.parse(["ttp", "list", "--data-d", "ttpdir"])
        self.assertEqual(listing["data-dir"], Path("ttpdir"))

    def test_requester_commands(self) -> None:
        enroll = cli.parse([
            "enroll", "--dat", "bank", "--token", "a-token", "--nam", "bank.example", "--rol", "server",
            "--ca-f", "sha256:" + "ab" * 32, "--key", "ec-p384",
        ])
        self.assertEqual(enroll["name"], "bank.example")
        self.assertEqual(enroll["token"], "a-token")
        self.assertEqual(enroll["key-type"].value, "ec-p384")
        renew = cli.parse(["renew", "--dat", "bank", "--new", "--key-t", "ec-p256", "--time", "3"])
        self.assertEqual((renew["new-key"], renew["timeout"]), (1, 3.0))
        crl = cli.parse(["crl", "--dat", "bank", "--ca-f", "sha256:" + "ab" * 32, "--ou", "crl.pem"])
        self.assertEqual(crl["out"], "crl.pem")

    def test_client_and_demo(self) -> None:
        client = cli.parse(["client", "--dat", "alice", "--server-n", "bank.example", "--transact", "pay 5", "--no-crl"])
        self.assertEqual(client["server-name"], "bank.example")
        self.assertEqual(client["transaction"], "pay 5")
        self.assertTrue(client["no-crl-check"])
        demo = cli.parse(["demo", "--transac", "pay 7", "--key-t", "ec-p256"])
        self.assertEqual(demo["transaction"], "pay 7")

    def test_short_options(self) -> None:
        """A short option's value stays with it, also in a group or attached (-dDIR)."""
        self.assertEqual(options_first(["-d", "DIR", "01"], ["data-dir="], "d:"), ["-d", "DIR", "--", "01"])
        self.assertEqual(options_first(["-dDIR", "01"], ["data-dir="], "d:"), ["-dDIR", "--", "01"])
        self.assertEqual(options_first(["-vd", "DIR", "01"], ["data-dir="], "vd:"), ["-vd", "DIR", "--", "01"])

    def test_ambiguous_prefix_is_a_usage_error(self) -> None:
        """``--ca`` could be --ca-cert or --ca-fingerprint: refused, naming the command."""
        with self.assertRaises(common.UsageFailure) as caught:
            cli.parse(["enroll", "--dat", "bank", "--ca", "x", "--name", "bank.example", "--role", "server", "--token", "t"])
        self.assertEqual(caught.exception.command, "tlsotp enroll")

    def test_value_form_with_equals(self) -> None:
        revoke = cli.parse(["ttp", "revoke", "--data-d=ttpdir", "01"])
        with self.assertRaises(common.UsageFailure):  # --data-dir or --database
            cli.parse(["ttp", "revoke", "--dat=ttpdir", "01"])
        self.assertEqual(revoke["data-dir"], Path("ttpdir"))


class VersionTests(SynchronousTestCase):
    def version_of(self, argv: list[str]) -> str:
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as caught:
            cli.parse(argv)
        self.assertEqual(caught.exception.code, 0)
        return out.getvalue()

    def test_version_everywhere(self) -> None:
        """``--version`` is tlsotp's, at the top and in every subcommand (not Twisted's)."""
        expected = f"tlsotp {tlsotp.__version__}\n"
        for argv in (["--version"], ["ttp", "--version"], ["ttp", "revoke", "--version"], ["enroll", "--version"],
                     ["client", "--version"], ["demo", "--version"]):
            self.assertEqual(self.version_of(argv), expected, argv)

    def test_one_source(self) -> None:
        """The installed distribution's version is the package's ``__version__``."""
        from importlib.metadata import version

        self.assertEqual(version("tlsotp"), tlsotp.__version__)


class PythonDashMTests(SynchronousTestCase):
    """``python -m tlsotp`` as a user runs it: real subprocesses."""

    def tlsotp(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PYTHON_M_TLSOTP, *args], cwd=cwd, env=subprocess_env(),
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    def test_version(self) -> None:
        result = self.tlsotp("--version", cwd=Path.cwd())
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, f"tlsotp {tlsotp.__version__}\n", ""))

    def test_abbreviated_options(self) -> None:
        """``tlsotp ttp revoke --data-d DIR 01`` reaches the database (an unknown serial: 1), not a usage error (2)."""
        cwd = Path(self.mktemp()).resolve()
        cwd.mkdir()
        init = self.tlsotp("ttp", "init", "--data-d", "ttp", cwd=cwd)
        self.assertEqual(init.returncode, 0, init)
        self.assertRegex(init.stdout, r"^sha256:[0-9a-f]{64}\n$")
        revoke = self.tlsotp("ttp", "revoke", "--data-d", "ttp", "01", "--reas", "key-compromise", cwd=cwd)
        self.assertEqual(revoke.returncode, 1, revoke)
        self.assertEqual(revoke.stderr, "tlsotp ttp revoke: no certificate with serial 1 was issued by this TTP\n")
        token = self.tlsotp("ttp", "token", "--data-d", "ttp", "--na", "bank.example", "--ro", "server", cwd=cwd)
        self.assertEqual(token.returncode, 0, token)
        listing = self.tlsotp("ttp", "list", "--data-", "ttp", cwd=cwd)
        self.assertEqual(listing.returncode, 0, listing)
        self.assertTrue(listing.stdout.startswith("SERIAL"), listing.stdout)


class TestCommandTests(SynchronousTestCase):
    def test_ci_runs_exactly_readme_command(self) -> None:
        """``.ci/run`` ends with README's test command, to the letter (lint, types, suite)."""
        readme = (REPO / "README.rst").read_text(encoding="utf-8")
        ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").rstrip("\n").splitlines()[-1]
        command = next(line.strip() for line in readme.splitlines() if "pip install -e '.[test]'" in line)
        self.assertEqual(ci, command)
        self.assertIn("ruff check tlsotp tests twisted benchmarks", command)
