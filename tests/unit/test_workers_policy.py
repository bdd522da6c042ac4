"""The pure parts of ``--workers``: the restart policy on a ``task.Clock``, the worker's settings
on its command line, and the one rule that makes the OTP store safe across processes.

No subprocess here (the unit tier forbids them): the real workers are in tests/process/test_workers.py.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tlsotp.commands import server_daemon
from tlsotp.database_checks import DatabaseUnusable
from tlsotp.database_url import PostgresTarget
from tlsotp.otp import store
from tlsotp.otp.messages import ConfirmStatus
from tlsotp.services.bank_service import BankServerService, BankServerSettings, build_service
from tlsotp.services.otp_authority import OTPPolicy
from tlsotp.services.sqlite_worker import open_sqlite, sqlite_transaction
from tlsotp.services.workers import (
    READY_FIELD,
    Restarter,
    RestartPolicy,
    WorkerConfig,
    WorkerEventsRelay,
    WorkerLogWriter,
    WorkerSecrets,
    WorkerSupervisor,
    decode_events,
    decode_record,
)

PEPPER = b"p" * 32


class RestartPolicyTests(SynchronousTestCase):
    def test_the_delay_doubles_while_a_worker_keeps_dying_up_to_the_maximum(self) -> None:
        policy = RestartPolicy(first_delay=0.5, max_delay=4.0)
        self.assertEqual([policy.delay(n) for n in range(1, 7)], [0.5, 1.0, 2.0, 4.0, 4.0, 4.0])

    def test_restarts_are_scheduled_on_the_clock_and_a_stable_run_resets_the_delay(self) -> None:
        clock = Clock()
        started: list[tuple[int, float]] = []
        restarter = Restarter(clock, RestartPolicy(first_delay=1.0, max_delay=8.0, stable_after=10.0),
                              lambda index: started.append((index, clock.seconds())))
        self.assertEqual(restarter.died(1, ran_for=0.1), 1.0)
        clock.advance(0.9)
        self.assertEqual(started, [])  # not before its delay
        clock.advance(0.1)
        self.assertEqual(started, [(1, 1.0)])
        self.assertEqual(restarter.died(1, ran_for=0.1), 2.0)  # died again at once: twice as long
        self.assertEqual(restarter.died(2, ran_for=0.1), 1.0)  # each worker has its own count
        clock.advance(1.0)
        self.assertEqual(started, [(1, 1.0), (2, 2.0)])
        clock.advance(1.0)
        self.assertEqual(started, [(1, 1.0), (2, 2.0), (1, 3.0)])
        self.assertEqual(restarter.died(1, ran_for=0.1), 4.0)
        clock.advance(4.0)
        self.assertEqual(restarter.died(1, ran_for=60.0), 1.0)  # it had run well: back to the first delay

    def test_cancel_stops_every_pending_restart(self) -> None:
        clock = Clock()
        started: list[int] = []
        restarter = Restarter(clock, RestartPolicy(), started.append)
        restarter.died(1, ran_for=0.0)
        restarter.died(2, ran_for=0.0)
        restarter.cancel()
        clock.advance(3600)
        self.assertEqual(started, [])
        self.assertEqual(clock.getDelayedCalls(), [])


class WorkerConfigTests(SynchronousTestCase):
    def test_the_settings_a_worker_gets_survive_its_command_line(self) -> None:
        settings = BankServerSettings(
            data_dir=Path("/srv/bank"), name="bank.example", otp_policy=OTPPolicy(8, 120, 5),
            allowed_clients=["b.example", "a.example"], max_connections=7, max_per_address=3,
            first_message_timeout=None, drain_timeout=4.5, workers=2, log_transactions=True,
        )
        config = WorkerConfig.from_settings(settings, index=2, family=10)
        again = WorkerConfig.from_json(config.to_json())
        self.assertEqual(again, config)
        self.assertEqual(again.suite_list, tuple(settings.suites))
        self.assertEqual(again.otp_policy, settings.otp_policy)
        self.assertEqual(again.allowed_clients, ("a.example", "b.example"))
        self.assertTrue(again.log_transactions)  # was dropped: workers never logged the text

    def test_a_database_reaches_the_worker_and_its_password_stays_off_the_command_line(self) -> None:
        settings = BankServerSettings(
            data_dir=Path("/srv/bank"), name="bank.example", workers=2,
            database=PostgresTarget("postgresql://bank@db.example/otp", "s3cret pass"),
            otp_pepper_file=Path("/etc/tlsotp/pepper.bin"),
        )
        config = WorkerConfig.from_settings(settings, index=1, family=2)
        argument = config.to_json()
        self.assertNotIn("s3cret", argument)
        self.assertNotIn("s3cret", repr(settings))  # a settings object in a log line or traceback
        self.assertNotIn("s3cret", repr(WorkerSecrets.from_settings(settings)))
        again = WorkerConfig.from_json(argument)
        self.assertEqual(again, config)
        self.assertEqual(again.otp_pepper_file, Path("/etc/tlsotp/pepper.bin"))
        line = WorkerSecrets.from_settings(settings).to_line()
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        secrets = WorkerSecrets.from_line(line)
        self.assertEqual(again.database(secrets), settings.database)
        # Without a database: no URL, no password, and the data dir's SQLite file.
        plain = WorkerConfig.from_json(WorkerConfig.from_settings(
            BankServerSettings(data_dir=Path("/srv/bank"), name="bank.example", workers=2), index=1, family=2).to_json())
        self.assertIsNone(plain.database(WorkerSecrets.from_line(b"")))
        self.assertIsNone(plain.otp_pepper_file)
        for junk in (b"not json\n", b"[1, 2]\n", b'{"database_password": 5}\n', b"\xff\n"):
            self.assertEqual(WorkerSecrets.from_line(junk), WorkerSecrets(), junk)

    def test_workers_is_at_least_one(self) -> None:
        with self.assertRaises(ValueError):
            BankServerSettings(data_dir=Path("/srv/bank"), name="bank.example", workers=0)


class WorkerLogWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.out = io.StringIO()
        self.writer = WorkerLogWriter(self.out, self.clock, delay=0.05, batch=3)

    def emit(self, level: LogLevel, text: str, **fields: object) -> None:
        self.writer({"log_level": level, "log_format": text, "log_namespace": "test", "log_time": 1.0, **fields})

    def lines(self) -> list[tuple[str, str, bool]]:
        records = [decode_record(line) for line in self.out.getvalue().splitlines()]
        return [(r[0].name, r[3], r[4]) for r in records if r is not None]

    def test_info_lines_leave_together_after_the_delay(self) -> None:
        self.emit(LogLevel.info, "one")
        self.emit(LogLevel.info, "two")
        self.assertEqual(self.lines(), [])
        self.clock.advance(0.05)
        self.assertEqual(self.lines(), [("info", "one", False), ("info", "two", False)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_full_batch_a_warning_and_the_ready_line_leave_at_once(self) -> None:
        for text in ("a", "b", "c"):
            self.emit(LogLevel.info, text)
        self.assertEqual(len(self.lines()), 3)
        self.emit(LogLevel.info, "d")
        self.emit(LogLevel.warn, "trouble")
        self.assertEqual(self.lines()[-2:], [("info", "d", False), ("warn", "trouble", False)])
        self.emit(LogLevel.info, "serving", **{READY_FIELD: True})
        self.assertEqual(self.lines()[-1], ("info", "serving", True))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush_writes_what_waits_and_cancels_the_timer(self) -> None:
        self.emit(LogLevel.info, "last words")
        self.writer.flush()
        self.assertEqual(self.lines(), [("info", "last words", False)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_line_that_is_not_a_record_is_none(self) -> None:
        for line in ("Traceback (most recent call last):", "[1, 2]", '["nolevel", "x", 1.0, "t", false]', "{}"):
            self.assertIsNone(decode_record(line), line)


class WorkersOptionTests(SynchronousTestCase):
    def parse(self, *extra: str) -> server_daemon.Options:
        options = server_daemon.Options()
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", self.mktemp(), "--name", "bank.example", "--ca-fingerprint", "sha256:" + "ab" * 32,
            "--token", "tok-xyz", *extra,
        ])
        return options

    def test_one_worker_is_the_single_process_as_before(self) -> None:
        options = self.parse()
        self.assertEqual(server_daemon.settings_from(options).workers, 1)
        made = server_daemon.makeService(options)
        self.assertIs(type(made), BankServerService)

    def test_more_workers_make_a_supervisor_that_runs_the_worker_command(self) -> None:
        made = server_daemon.makeService(self.parse("--workers", "3"))
        assert isinstance(made, WorkerSupervisor)
        self.assertEqual(made.settings.workers, 3)
        self.assertEqual(made.worker_command[1:], ["-m", "tlsotp.commands.bank_worker"])

    def test_zero_workers_is_a_usage_error(self) -> None:
        with self.assertRaises(usage.UsageError):
            self.parse("--workers", "0")

    def test_build_service_refuses_several_workers_rather_than_running_one(self) -> None:
        with self.assertRaises(ValueError):
            build_service(BankServerSettings(data_dir=Path("/srv/bank"), name="bank.example", workers=2))


class Interleaving:
    """A sqlite3 cursor that runs ``between`` once, just before its first write statement: the
    moment another process's decision would slip in between this one's reads and its write."""

    def __init__(self, cursor: sqlite3.Cursor, between: Callable[[], None]) -> None:
        self.cursor = cursor
        self.between: Callable[[], None] | None = between

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        if self.between is not None and sql.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE")):
            between, self.between = self.between, None
            between()
        return self.cursor.execute(sql, parameters)

    def fetchone(self) -> Any:
        return self.cursor.fetchone()


class CrossProcessDecisionTests(SynchronousTestCase):
    """Two connections to one file stand for two worker processes (each has its own)."""

    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.first = open_sqlite(self.path, store.configure_connection)
        self.second = open_sqlite(self.path, store.configure_connection)
        self.second.execute("PRAGMA busy_timeout = 0")  # refused at once rather than waiting 10 s
        self.addCleanup(self.first.close)
        self.addCleanup(self.second.close)

    def confirm(self, connection: sqlite3.Connection, code: str, between: Callable[[], None] | None = None) -> Any:
        def decide(cursor: sqlite3.Cursor, **kwargs: Any) -> store.Confirmation:
            return store.confirm(cast_cursor(Interleaving(cursor, between)) if between else cursor, **kwargs)

        return sqlite_transaction(
            connection, self.path, decide, pepper=PEPPER, client="alice.example", transaction="Rs 5 to Bob",
            code=code, max_attempts=3, now=1000,
        )

    def test_a_decision_holds_the_write_lock_from_its_first_read(self) -> None:
        issued = sqlite_transaction(
            self.first, self.path, store.issue, pepper=PEPPER, client="alice.example", transaction="Rs 5 to Bob",
            digits=6, ttl_seconds=300, now=1000,
        )
        other: list[object] = []

        def second_worker_confirms() -> None:
            try:
                other.append(self.confirm(self.second, issued.code).status)
            except (sqlite3.OperationalError, DatabaseUnusable) as exc:
                other.append(exc)

        first = self.confirm(self.first, issued.code, between=second_worker_confirms)
        self.assertEqual(first.status, ConfirmStatus.accepted)
        # The second could not even begin while the first decided (it would have read the code
        # as still pending and accepted it a second time).
        self.assertEqual(len(other), 1)
        self.assertNotEqual(other[0], ConfirmStatus.accepted)
        self.assertIsInstance(other[0], (sqlite3.OperationalError, DatabaseUnusable))
        # Once the first has committed, the second decides on what it wrote.
        self.assertEqual(self.confirm(self.second, issued.code).status, ConfirmStatus.already_used)


def cast_cursor(cursor: Interleaving) -> sqlite3.Cursor:
    return cursor  # type: ignore[return-value]


class WorkerEventsRelayTests(SynchronousTestCase):
    """A worker's sessions' events under ``--metrics`` reach the supervisor as one line per batch
    of its log writer, which ``decode_events`` reads back into the ``BankEvents`` calls."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.out = io.StringIO()
        self.writer = WorkerLogWriter(self.out, self.clock, delay=0.05)
        self.relay = WorkerEventsRelay(self.writer)
        self.open = 0
        self.relay.open_connections = lambda: self.open

    def lines(self) -> list[str]:
        return [line for line in self.out.getvalue().splitlines() if line]

    def test_a_sessions_events_leave_together_and_read_back_as_the_same_calls(self) -> None:
        self.open = 2
        self.relay.handshake_done(0.004)
        self.relay.otp_issued()
        self.relay.session_ended("issued", "none", 0.01)
        self.relay.confirmation("accepted")
        self.relay.otp_refused("locked")
        self.assertEqual(self.lines(), [])  # batched, as info lines are
        self.clock.advance(0.05)
        [line] = self.lines()
        calls, open_now = decode_events(line) or ([], -1)
        self.assertEqual(calls, [
            ("handshake_done", (0.004,)), ("otp_issued", ()), ("session_ended", ("issued", "none", 0.01)),
            ("confirmation", ("accepted",)), ("otp_refused", ("locked",)),
        ])
        self.assertEqual(open_now, 2)
        self.assertIsNone(decode_record(line))  # never taken for a log record, nor the reverse
        self.clock.advance(10)
        self.assertEqual(len(self.lines()), 1)  # nothing new: nothing sent

    def test_an_open_connection_count_that_changed_alone_is_sent_on_the_tick(self) -> None:
        self.relay.tick()
        self.clock.advance(1)
        self.assertEqual(self.lines(), [])
        self.open = 3
        self.relay.tick()
        self.clock.advance(0.05)
        [line] = self.lines()
        self.assertEqual(decode_events(line), ([], 3))

    def test_what_is_not_a_relay_line_is_none(self) -> None:
        for line in ('{"events": [["x"]], "open": 0}', '{"events": [["h"]], "open": 0}',
                     '{"events": [["h", "1"]], "open": 0}', '{"events": [["h", -1]], "open": 0}',
                     '{"events": [["r", "' + "a" * 65 + '"]], "open": 0}', '{"events": [], "open": -1}',
                     '{"events": {}, "open": 0}', '{"open": 0}', '["info", "x", 0, "text", false]', "{", "[]"):
            self.assertIsNone(decode_events(line), line)

    @given(st.text(max_size=200) | st.builds(json.dumps, st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["events", "open", "x"]), inner,
                                                                    max_size=3),
        max_leaves=12)))
    def test_any_line_decodes_or_is_none_and_never_raises(self, line: str) -> None:
        decoded = decode_events(line)
        if decoded is not None:
            calls, open_now = decoded
            self.assertGreaterEqual(open_now, 0)
            for method, _ in calls:
                self.assertIn(method, {"handshake_done", "session_ended", "otp_issued", "otp_refused", "confirmation"})
