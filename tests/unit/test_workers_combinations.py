"""``--workers`` above 1 refuses the options its workers do not honour yet."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tlsotp.commands.server_daemon import Options


class WorkersCombinationTests(SynchronousTestCase):
    def test_workers_with_database_or_metrics_is_a_usage_error(self) -> None:
        for extra in (["--database", "postgresql://bank@db/otp"], ["--metrics", "tcp:0:interface=127.0.0.1"]):
            options = Options()
            with self.assertRaises(usage.UsageError) as caught:
                options.parseOptions(["--data-dir", self.mktemp(), "--name", "bank.example", "--workers", "2", *extra])
            self.assertIn("--workers above 1", str(caught.exception))
