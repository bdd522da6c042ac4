"""Every duration option of the daemons and commands takes 90s/30m/1h/7d, and a bare number keeps
the unit it always had (issue 9: one duration syntax)."""

from __future__ import annotations

import datetime
from pathlib import Path

from twisted.python import usage
from twisted.trial import unittest

from tlsotp.commands import client_daemon, requester, server_daemon, ttp_daemon
from tlsotp.commands.option_types import hours, seconds, whole_days, whole_seconds
from tlsotp.ttp.ca import init_ca

PIN = "sha256:" + "ab" * 32


class CoercerTests(unittest.SynchronousTestCase):
    def test_suffixes_and_bare_numbers(self) -> None:
        self.assertEqual([seconds(t) for t in ("90s", "30m", "1h", "7d", "20", "0.5")], [90, 1800, 3600, 604800, 20, 0.5])
        self.assertEqual([hours(t) for t in ("24", "1d", "90m", "3600s", "1.5")], [24, 24, 1.5, 1, 1.5])
        self.assertEqual([whole_days(t) for t in ("7", "7d", "168h")], [7, 7, 7])
        self.assertEqual([whole_seconds(t) for t in ("300", "5m", " 1H ")], [300, 300, 3600])
        self.assertIsInstance(whole_seconds("5m"), int)
        self.assertIsInstance(whole_days("168h"), int)

    def test_bad_durations_are_value_errors(self) -> None:
        for coerce, bad in [
            (seconds, "0"), (seconds, "0s"), (seconds, "-1"), (seconds, "5x"), (seconds, ""), (seconds, "m"),
            (seconds, "1 h"), (hours, "0m"), (whole_days, "12h"), (whole_days, "1.5"), (whole_seconds, "0.5"),
        ]:
            with self.assertRaises(ValueError, msg=(coerce, bad)):
                coerce(bad)


class ServerDaemonDurationTests(unittest.SynchronousTestCase):
    def parse(self, *extra: str) -> server_daemon.Options:
        options = server_daemon.Options()
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", self.mktemp(), "--name", "bank.example", "--ca-fingerprint", PIN,
            "--token", "tok-xyz", *extra,
        ])
        return options

    def test_durations_reach_the_settings(self) -> None:
        options = self.parse(
            "--otp-ttl", "5m", "--crl-refresh", "2m", "--renew-check", "1h", "--renew-before", "2d",
            "--timeout", "45s", "--first-message-timeout", "3s", "--drain-timeout", "1m",
        )
        settings = server_daemon.settings_from(options)
        self.assertEqual(settings.otp_policy.ttl_seconds, 300)
        self.assertIsInstance(settings.otp_policy.ttl_seconds, int)
        self.assertEqual(
            (settings.crl_refresh, settings.renew_check, settings.renew_before, settings.timeout,
             settings.first_message_timeout, settings.drain_timeout),
            (120, 3600, 2 * 86400, 45, 3, 60),
        )

    def test_bare_numbers_stay_seconds(self) -> None:
        options = self.parse("--otp-ttl", "300", "--crl-refresh", "300", "--renew-before", "172800", "--timeout", "2.5")
        self.assertEqual(
            (options["otp-policy"].ttl_seconds, options["crl-refresh"], options["renew-before"], options["timeout"]),
            (300, 300, 172800, 2.5),
        )

    def test_bad_durations_are_usage_errors(self) -> None:
        for bad in (["--otp-ttl", "5x"], ["--otp-ttl", "1.5"], ["--crl-refresh", "0m"], ["--drain-timeout", "-1"]):
            with self.assertRaises(usage.UsageError, msg=bad):
                self.parse(*bad)


class TTPDaemonDurationTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        init_ca(self.data_dir)

    def parse(self, *extra: str) -> ttp_daemon.Options:
        options = ttp_daemon.Options()
        options.parseOptions(["--data-dir", str(self.data_dir), *extra])  # type: ignore[no-untyped-call]
        return options

    def test_durations_reach_the_settings(self) -> None:
        settings = ttp_daemon.settings_from(self.parse(
            "--crl-hours", "90m", "--cert-days", "336h", "--timeout", "1m", "--first-message-timeout", "4s",
            "--drain-timeout", "2m",
        ))
        self.assertEqual(settings.crl_validity, datetime.timedelta(minutes=90))
        self.assertEqual(settings.cert_days, 14)
        self.assertEqual((settings.timeout, settings.first_message_timeout, settings.drain_timeout), (60, 4, 120))

    def test_bare_numbers_keep_their_units(self) -> None:
        settings = ttp_daemon.settings_from(self.parse("--crl-hours", "12", "--cert-days", "3", "--timeout", "20"))
        self.assertEqual(settings.crl_validity, datetime.timedelta(hours=12))
        self.assertEqual((settings.cert_days, settings.timeout), (3, 20))

    def test_bad_durations_are_usage_errors(self) -> None:
        for bad in (["--cert-days", "12h"], ["--crl-hours", "0"], ["--timeout", "soon"]):
            with self.assertRaises(usage.UsageError, msg=bad):
                self.parse(*bad)


class CommandDurationTests(unittest.SynchronousTestCase):
    def test_requester_timeout(self) -> None:
        options = requester.CRLOptions()
        options.parseOptions(["--data-dir", self.mktemp(), "--ca-fingerprint", PIN, "--timeout", "2m"])  # type: ignore[no-untyped-call]
        self.assertEqual(options["timeout"], 120)

    def test_client_daemon_interval(self) -> None:
        options = client_daemon.Options()
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", self.mktemp(), "--server-name", "bank.example", "--ca-fingerprint", PIN, "--interval", "1h",
        ])
        self.assertEqual(options["interval"], 3600)
