"""benchmarks/verdict.py reads issue 12's lines off a run's figures: each threshold on the
right side, a missing part "not measured" rather than a guess."""

from __future__ import annotations

import argparse
from typing import Any

from twisted.trial import unittest

from benchmarks.verdict import done_means


def session_rows(key: str, level: int, tlsotp: list[float], tls: list[float], p99: tuple[float, float] = (1.0, 1.0)
                 ) -> list[dict[str, Any]]:
    rows = []
    for rep, (mine, theirs) in enumerate(zip(tlsotp, tls), 1):
        rows.append({"key": key, "kind": "tlsotp", "level": level, "rep": rep, "cpu_us": mine, "p99": p99[0]})
        rows.append({"key": key, "kind": "tls", "level": level, "rep": rep, "cpu_us": theirs, "p99": p99[1]})
    return rows


def workers_run(workers: int, server_us: float, rate: float, bound: float, shares: dict[str, float]) -> dict[str, Any]:
    return {"workers": workers, "sessions": 3000, "failed": 0, "rate": rate, "server_us": server_us,
            "supervisor_us": 0.0, "load_us": 1000.0, "bound": bound, "switches": 3.0, "shares": shares}


def figures(**changes: Any) -> dict[str, Any]:
    """A run that reaches every line it can, with ``changes`` applied."""
    base: dict[str, Any] = {
        "rows": (session_rows("ec-p256", 50, [900, 950, 1000], [1000, 1000, 1000])
                 + session_rows("rsa-2048", 50, [1100, 1150, 1100], [1000, 1000, 1000])
                 + session_rows("ec-p256", 200, [1000] * 3, [1000] * 3, p99=(110.0, 100.0))),
        "floors": {"ec-p256": 500.0},
        "extras": {("ec-p256", "tlsotp"): (3300.0, 20.0), ("ec-p256", "tls"): (48000.0, 15.0)},
        "points": [(0, 50 * 2**20, 0), (20_000, 60 * 2**20, 0), (30_000, 60 * 2**20 + 4096, 0)],
        "otp_store": [(10_000, 0, 80.0, 0, 0, 0, [], 40.0), (1_000_000, 0, 86.0, 0, 0, 0, [], 50.0)],
        "ttp": [("50 sequential", 900.0), ("200 at 16 concurrent, prepared", 400.0)],
        "ttp_floor": 200.0,
        "workers": {1: [workers_run(1, 1000, 800, 1000, {"-": 1.0})] * 3,
                    2: [workers_run(2, 1050, 900, 1000, {"1": 0.5, "2": 0.5})] * 3},
        "lock_waits": {1: (3, 1000, 5.0), 2: (2, 1000, 4.0)},
        "cross_worker_test": True,
        "refresh_test": True,
    }
    base.update(changes)
    return base


def verdicts(run: dict[str, Any], elapsed: float = 200.0, warmup: int = 20_000) -> dict[str, str]:
    args = argparse.Namespace(bare_tcp_us=100.0, soak_warmup=warmup)
    return {what: verdict for what, _, _, verdict in done_means(run, args, elapsed, False)}


class DoneMeansTests(unittest.TestCase):
    def test_a_run_within_every_bound_reaches_every_line(self) -> None:
        got = verdicts(figures())
        # 950 us against a 500 us floor is 1.9x: within 2.0x too.
        self.assertEqual(set(got.values()), {"reached"}, got)
        self.assertEqual(len(got), 16)

    def test_each_threshold_is_crossed_on_the_right_side(self) -> None:
        over = verdicts(figures(
            rows=(session_rows("ec-p256", 50, [1050, 1010, 1020], [1000, 1000, 1000])
                  + session_rows("rsa-2048", 50, [1300] * 3, [1000] * 3)
                  + session_rows("ec-p256", 200, [1000] * 3, [1000] * 3, p99=(130.0, 100.0))),
            extras={("ec-p256", "tlsotp"): (9000.0, 150.0)},
            points=[(0, 50 * 2**20, 0), (20_000, 60 * 2**20, 0), (30_000, 61 * 2**20, 0)],
            otp_store=[(10_000, 0, 80.0, 0, 0, 0, [], 40.0), (1_000_000, 0, 90.0, 0, 0, 0, [], 50.0)],
            ttp=[("200 at 16 concurrent, prepared", 401.0)],
            workers={1: [workers_run(1, 1000, 800, 1000, {"-": 1.0})] * 3,
                     2: [workers_run(2, 1150, 790, 1000, {"1": 0.7, "2": 0.3})] * 3},
            lock_waits={1: (3, 1000, 5.0), 2: (270, 1000, 900.0)},
            cross_worker_test=False,
            refresh_test=False,
        ), elapsed=700.0)
        self.assertEqual(set(over.values()), {"NOT reached"}, over)

    def test_a_part_left_out_is_not_measured_rather_than_guessed(self) -> None:
        got = verdicts({"rows": session_rows("ec-p256", 1, [1000], [1000])})
        measured = {what: v for what, v in got.items() if v != "not measured"}
        self.assertEqual(list(measured), ["the benchmark itself"])

    def test_memory_growth_is_read_from_the_end_of_the_warm_up(self) -> None:
        # 10 MiB in the warm-up (the page cache filling), 4 KiB after it: flat; the same samples
        # with no warm-up declared count the 10 MiB.
        def memory(got: dict[str, str]) -> tuple[str, str]:
            return next((what, v) for what, v in got.items() if what.startswith("memory"))

        self.assertEqual(memory(verdicts(figures())),
                         ("memory over 10,000 sessions (after 20,000 of warm-up)", "reached"))
        self.assertEqual(memory(verdicts(figures(), warmup=0)),
                         ("memory over 30,000 sessions (after 0 of warm-up)", "NOT reached"))

    def test_the_ttp_line_is_reached_by_its_best_configuration(self) -> None:
        got = verdicts(figures(ttp=[("50 sequential", 2000.0), ("200 at 16 concurrent, prepared", 390.0)]))
        self.assertEqual(got["TTP enrollment CPU vs its signing floor"], "reached")
        got = verdicts(figures(ttp=[("50 sequential", float("nan"))]))  # --enrollments 0
        self.assertEqual(got["TTP enrollment CPU vs its signing floor"], "not measured")

    def test_unreached_lines_print_the_bound_the_machine_sets_beside_them(self) -> None:
        args = argparse.Namespace(bare_tcp_us=100.0, soak_warmup=20_000)
        run = figures(corun=(0.100, 0.109), workers={
            1: [workers_run(1, 1000, 800, 1000, {"-": 1.0})] * 3,
            2: [dict(workers_run(2, 1150, 900, 1000, {"1": 0.5, "2": 0.5}), supervisor_us=60.0)] * 3})
        printed = {what: text for what, _, text, _ in done_means(run, args, 200.0, False)}
        # The TTP's floor is 200 us: + a 100 us bare Twisted server = 1.50x.
        self.assertIn("bound: floor + a bare Twisted server = 1.50x",
                      printed["TTP enrollment CPU vs its signing floor"])
        workers_cpu = printed["--workers 2: server CPU/session vs one worker's"]
        self.assertIn("1.15x (1150 vs 1000 us", workers_cpu)
        self.assertIn("1.09x without the supervisor's 60 us", workers_cpu)
        self.assertIn("the machine alone (the same work in 2 processes at once) 1.09x", workers_cpu)

    def test_a_burst_the_workers_mode_took_too_long_fails_the_burst_line(self) -> None:
        # Read like the daemons' (after 500 connections already taken): by the second burst; the
        # first, which also grows a fresh process's heap, is printed beside it.
        line = "500 connects in a burst, all accepted"
        self.assertEqual(verdicts(figures(worker_bursts={1: (130.0, 30.0), 2: (90.0, 60.0)}))[line], "reached")
        self.assertEqual(verdicts(figures(worker_bursts={1: (40.0, 30.0), 2: (90.0, 150.0)}))[line], "NOT reached")
        args = argparse.Namespace(bare_tcp_us=100.0, soak_warmup=20_000)
        run = figures(worker_bursts={2: (95.0, 60.0)})
        printed = {what: text for what, _, text, _ in done_means(run, args, 200.0, False)}
        self.assertEqual(printed[line], "ec-p256 20 ms; --workers 2 60 ms (first after start 95 ms)")


class LockWaitLinesTests(unittest.TestCase):
    """benchmarks.workers reads the lock-wait line each OTP store logs as it closes: the
    benchmark's pattern and the store's wording must not drift apart (a line it no longer
    matches would read as "no SQLite store")."""

    def test_the_stores_own_line_is_summed(self) -> None:
        from benchmarks.workers import lock_waits_in
        from tlsotp.services.sqlite_worker import LockWaits

        waits = LockWaits()
        for seconds in (0.0001, 0.005, 0.0002, 0.020):
            waits.record(seconds)
        log = (f"2026-12-04T20:00:00+0000 [worker 1] worker 1 (pid 7): OTP store /d/otp.sqlite3: {waits.summary()}\n"
               f"2026-12-04T20:00:01+0000 [-] OTP store /d/otp.sqlite3: {LockWaits().summary()}\n")
        self.assertEqual(lock_waits_in(log), (2, 4, 25.0))
