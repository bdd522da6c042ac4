"""``--token-file`` on the daemons and commands that take a token (issue 9: secrets off the
command line): read and stripped while parsing, ``-`` is standard input, exclusive with
``--token``, one usage error naming the file when it is unreadable or empty; the daemons log
one warning for a ``--token`` on their command line."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import cast

from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from tlsotp.commands import client, client_daemon, requester, server_daemon
from tlsotp.commands.party_options import warn_token_on_argv

PIN = "sha256:" + "ab" * 32
TOKEN = "tokid.secret-part"


class TokenFileTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.token_file = self.dir / "token"
        self.token_file.write_text(f"  {TOKEN}\n\n")

    def server(self, *extra: str) -> server_daemon.Options:
        options = server_daemon.Options()
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", str(self.dir / "bank"), "--name", "bank.example", "--ca-fingerprint", PIN, *extra,
        ])
        return options

    def test_the_daemons_and_commands_read_and_strip_the_file(self) -> None:
        server = self.server("--token-file", str(self.token_file))
        self.assertEqual(server_daemon.settings_from(server).token, TOKEN)
        self.assertFalse(server["token-on-argv"])
        for options in (client_daemon.Options(), client.ClientCommandOptions()):
            options.parseOptions([  # type: ignore[no-untyped-call]
                "--data-dir", str(self.dir / "alice"), "--server-name", "bank.example", "--name", "alice.example",
                "--ca-fingerprint", PIN, "--token-file", str(self.token_file),
            ])
            self.assertEqual(options.run_settings().token, TOKEN)
        enroll = requester.EnrollOptions()
        enroll.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", str(self.dir / "p"), "--name", "alice.example", "--role", "client",
            "--ca-fingerprint", PIN, "--token-file", str(self.token_file),
        ])
        self.assertEqual(enroll["token"], TOKEN)

    def test_dash_is_standard_input(self) -> None:
        self.patch(sys, "stdin", io.StringIO(TOKEN + "\n"))
        options = client.ClientCommandOptions()
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", str(self.dir / "alice"), "--server-name", "bank.example", "--name", "alice.example",
            "--ca-fingerprint", PIN, "--token-file", "-",
        ])
        self.assertEqual(options["token"], TOKEN)
        self.patch(sys, "stdin", io.StringIO(f"{TOKEN}\n"))
        enroll = requester.EnrollOptions()
        enroll.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", str(self.dir / "p"), "--name", "alice.example", "--role", "client",
            "--ca-fingerprint", PIN, "--token-file", "-",
        ])
        self.assertEqual(enroll["token"], TOKEN)

    def test_token_and_token_file_are_exclusive(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            self.server("--token", TOKEN, "--token-file", str(self.token_file))
        self.assertEqual(str(caught.exception), "give --token or --token-file, not both")

    def test_an_unreadable_or_empty_file_is_one_usage_error(self) -> None:
        missing = self.dir / "missing"
        with self.assertRaises(usage.UsageError) as caught:
            self.server("--token-file", str(missing))
        self.assertEqual(str(caught.exception), f"cannot read --token-file {missing}: No such file or directory")
        with self.assertRaises(usage.UsageError) as caught:
            self.server("--token-file", str(self.dir))
        self.assertIn(f"cannot read --token-file {self.dir}: Is a directory", str(caught.exception))
        empty = self.dir / "empty"
        empty.write_text(" \n")
        with self.assertRaises(usage.UsageError) as caught:
            self.server("--token-file", str(empty))
        self.assertIn(f"--token-file {empty} is empty", str(caught.exception))
        self.patch(sys, "stdin", io.StringIO(""))
        with self.assertRaises(usage.UsageError) as caught:
            self.server("--token-file", "-")
        self.assertIn("--token-file standard input is empty", str(caught.exception))
        huge = self.dir / "huge"
        huge.write_text("x" * 10000)
        with self.assertRaises(usage.UsageError) as caught:
            self.server("--token-file", str(huge))
        self.assertIn("too long for a token", str(caught.exception))

    def test_a_token_on_the_daemon_command_line_is_warned_about_once(self) -> None:
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        warn_token_on_argv("tlsotp-server", self.server("--token-file", str(self.token_file)))
        self.assertEqual(events, [])
        warn_token_on_argv("tlsotp-server", self.server("--token", TOKEN))
        self.assertEqual(len(events), 1)
        text = formatEvent(events[0])
        self.assertIn("--token on the command line is visible", text)
        self.assertIn("--token-file", text)
        self.assertNotIn(TOKEN, text)


class ReadmeTokenTests(unittest.SynchronousTestCase):
    def test_no_readme_example_puts_a_token_on_a_command_line(self) -> None:
        readme = Path(__file__).resolve().parents[2] / "README.rst"
        examples = [line for line in readme.read_text(encoding="utf-8").splitlines() if line.startswith("    ")]
        self.assertTrue(any("--token-file" in line for line in examples))
        self.assertEqual([line for line in examples if re.search(r"--token(?!-file)\b", line)], [])
