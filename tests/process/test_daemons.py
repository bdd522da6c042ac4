"""Start-up of the server and client daemons, and the demo, as an operator runs them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from twisted.trial import unittest

from tests.processes import REPO, TLSOTP, TWISTD, closed_port
from tlsotp.handshake import ALL_SUITES, KeyExchange

FINGERPRINT = "sha256:" + "ab" * 32


def twistd(workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    log = workdir / "twistd.log"
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile", "", "--logfile", str(log), *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    return result, log.read_text() if log.exists() else ""


class ServerStartupTests(unittest.TestCase):
    def setUp(self) -> None:
        # Absolute: the daemons run with the repository as their working directory.
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir()

    def test_no_certificate_and_no_token_is_one_line_exit_1(self) -> None:
        result, _ = twistd(self.workdir, "tlsotp-server", "--data-dir", str(self.workdir / "bank"), "--name", "bank.example")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.strip(),
            f"tlsotp-server: {self.workdir / 'bank'} holds no certificate yet: start with --token-file FILE to enroll",
        )

    def test_no_pin_is_one_line_exit_1(self) -> None:
        result, _ = twistd(
            self.workdir, "tlsotp-server", "--data-dir", str(self.workdir / "bank"), "--name", "bank.example",
            "--token", "x.y",
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("--ca-fingerprint or --ca-cert", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1)

    def test_unreachable_ttp_stops_with_exit_1_and_one_log_line(self) -> None:
        result, log = twistd(
            self.workdir, "tlsotp-server", "--data-dir", str(self.workdir / "bank"), "--name", "bank.example",
            "--token", "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "--ca-fingerprint", FINGERPRINT, "--ttp", f"tcp:host=127.0.0.1:port={closed_port(self)}", "--timeout", "5",
        )
        self.assertEqual(result.returncode, 1, log)
        self.assertEqual(len(re.findall("tlsotp-server cannot start", log)), 1, log)
        self.assertNotIn("Traceback", log)

    def test_bad_suite_name_is_a_usage_error(self) -> None:
        result, _ = twistd(
            self.workdir, "tlsotp-server", "--data-dir", str(self.workdir / "bank"), "--name", "bank.example",
            "--suites", "TLSOTP_NULL_WITH_NULL",
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("TLSOTP_NULL_WITH_NULL", result.stderr + result.stdout)


class DemoTests(unittest.TestCase):
    def demo(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*TLSOTP, "demo", *args],
            cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )

    def test_demo_ends_with_the_otp(self) -> None:
        result = self.demo()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(
            result.stdout,
            r"The OTP for transferring Rs 1,00,000 to your friend's account is \d{6}\.\n\(valid until .* UTC, for one use\)\n\Z",
        )
        for step in ["ClientHello", "ServerHello", "CertificateVerify", "Finished", "round trips:  2", "(server log) "]:
            self.assertIn(step, result.stdout)
        self.assertEqual(result.stderr, "")

    def test_demo_with_rsa_key_transport(self) -> None:
        suite = next(s for s in ALL_SUITES if s.key_exchange is KeyExchange.RSA_OAEP)
        result = self.demo("--suite", suite.name)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("KeyTransport", result.stdout)
        self.assertIn(f"suite:        {suite.name}", result.stdout)

    def test_demo_refuses_an_unknown_suite(self) -> None:
        result = self.demo("--suite", "TLSOTP_NULL_WITH_NULL")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
