"""``--workers`` above 1 refuses the option its workers do not honour yet (``--metrics``)."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tlsotp.commands.server_daemon import Options


class WorkersCombinationTests(SynchronousTestCase):
    def test_workers_with_metrics_is_a_usage_error(self) -> None:
        options = Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--data-dir", self.mktemp(), "--name", "bank.example", "--workers", "2",
                                  "--metrics", "tcp:0:interface=127.0.0.1"])
        self.assertIn("--workers above 1 does not work with --metrics", str(caught.exception))

    def test_workers_with_a_database_is_no_usage_error(self) -> None:
        # Refused later, for what the start needs (no token to enroll with), not for the pair.
        options = Options()
        with self.assertRaises(SystemExit) as stopped:
            options.parseOptions(["--data-dir", self.mktemp(), "--name", "bank.example", "--workers", "2",
                                  "--database", "postgresql://bank@db/otp"])
        said = str(stopped.exception.code)
        self.assertTrue(said.startswith("tlsotp-server: "), said)
        self.assertIn("token", said)
        self.assertNotIn("--workers", said)
