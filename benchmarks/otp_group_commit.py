"""CPU and fsyncs per OTP issue: one transaction per call (the old way) vs group commit.

    python benchmarks/otp_group_commit.py [--calls 3000] [--concurrency 50]

``--concurrency`` callers each issue an OTP and, once it is answered, issue the next, on a real
reactor and a real SQLite file (WAL, ``synchronous=FULL``, the store's own configuration).
"per call" runs each ``store.issue`` on ``DatabaseWorker.run`` in its own transaction (one
thread hop and one commit each); "group" uses ``SQLiteGroupWorker.transact``. Prints the whole
process's CPU (both threads) per issue, the wall time and the commits. Not a test.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from tlsotp.otp import store
from tlsotp.services.sqlite_worker import DatabaseWorker, SQLiteGroupWorker, open_sqlite, sqlite_transaction

PEPPER = b"p" * 32


async def measure(reactor: Any, mode: str, calls: int, concurrency: int, directory: Path) -> dict[str, float]:
    path = directory / f"{mode}.sqlite3"
    kwargs = dict(pepper=PEPPER, client="alice.example", digits=6, ttl_seconds=300, now=int(time.time()))
    if mode == "group":
        group = SQLiteGroupWorker(reactor, path, lambda: open_sqlite(path, store.configure_connection))
        group.startService()
        worker: DatabaseWorker[sqlite3.Connection] = group

        def one(i: int) -> defer.Deferred[Any]:
            return group.transact(store.issue, transaction=f"tx {i}", **kwargs)
    else:
        worker = DatabaseWorker(reactor, lambda: open_sqlite(path, store.configure_connection), sqlite3.Connection.close)
        worker.startService()

        def one(i: int) -> defer.Deferred[Any]:
            return worker.run(sqlite_transaction, path, store.issue, transaction=f"tx {i}", **kwargs)

    numbers = iter(range(calls))

    async def caller() -> None:
        for i in numbers:
            await one(i)

    cpu, wall = time.process_time(), time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(caller()) for _ in range(concurrency)])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    commits = group.groups if mode == "group" else calls
    await worker.stopService()
    return {"cpu_us": cpu / calls * 1e6, "wall_s": wall, "commits": commits}


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        for rep in range(args.repetitions):
            for mode in ("per call", "group"):
                where = Path(directory) / str(rep)
                where.mkdir(exist_ok=True)
                r = await measure(reactor, mode.replace(" ", "-"), args.calls, args.concurrency, where)
                print(f"run {rep + 1} {mode:<8}  {args.calls} issues at {args.concurrency} concurrent: "
                      f"CPU {r['cpu_us']:6.0f} us/issue  wall {r['wall_s']:5.2f} s  commits {r['commits']:.0f}", flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
