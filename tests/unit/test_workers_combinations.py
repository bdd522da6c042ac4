"""``--workers`` above 1 goes with every other option of the server, ``--database`` and
``--metrics`` included (each was refused until its workers honoured it)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tlsotp.commands.server_daemon import Options


class WorkersCombinationTests(SynchronousTestCase):
    def test_workers_with_a_database_or_metrics_is_no_usage_error(self) -> None:
        for extra in (["--database", "postgresql://bank@db/otp"], ["--metrics", "tcp:0:interface=127.0.0.1"]):
            options = Options()
            # Refused later, for what the start needs (no token to enroll with), not for the pair.
            with self.assertRaises(SystemExit) as stopped:
                options.parseOptions(["--data-dir", self.mktemp(), "--name", "bank.example", "--workers", "2", *extra])
            said = str(stopped.exception.code)
            self.assertTrue(said.startswith("tlsotp-server: "), said)
            self.assertIn("token", said)
            self.assertNotIn("--workers", said)
