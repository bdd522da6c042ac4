"""The TTP daemon's CPU per enrollment against its signing floor (issue 12), and its profile.

    python -m benchmarks.ttp_enrollment [--enrollments 200] [--repetitions 3] [--concurrency 1,16]
                                        [--prepared] [--profile DIR [--gil]]

Starts the real ``twistd -n tlsotp-ttp`` (EC P-256 root, the ``tlsotp ttp init`` default), mints
tokens in its store, and has a separate load process (``benchmarks.server --enroll-load``) run
``--enrollments`` real enrollments per batch (a fresh P-256 key, a CSR, a TCP connection and a
token proof each), with each ``--concurrency`` level in flight at once, the levels interleaved,
``--repetitions`` times. With ``--prepared`` the load process makes every request before its
batch starts and sends it raw (no key generation, reply check or files of its own during the
batch), so that it can keep the TTP busy; each request is still a full, new enrollment for the
TTP. It reads the daemon's CPU per thread (/proc schedstat) before and after each batch and
prints, per level, TTP CPU us/enrollment per repetition and as the median, in all and on the
reactor thread, and enrollments/s; beside them the signing floor
(``benchmarks.server.signing_floor_us``: CSR load + verify + sign in one loop) and the bound no
code change in the TTP can remove, each timed alone in this process: the floor, one durable
SQLite commit (WAL, ``synchronous=FULL``) and one accepted TCP connection with one small request
and reply in a bare Twisted protocol, with and without a thread hop. For one enrollment at a
time it also times the floor and that bound with the process idle before each round for as long
as the TTP waits between two sequential enrollments: what this machine charges for the same
work started cold. ``--profile DIR`` records the daemon with py-spy during the last batch and
writes DIR/ttp.txt (the top of the flat profile); ``--gil`` samples only the GIL holder.
Not a test: absolute numbers are noisy on a shared machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.daemon_vs_tls import REPO, TWISTD, env, free_port, spawn, stop, tlsotp, wait_listening
from benchmarks.server import signing_floor_us


def mint(data_dir: Path, prefix: str, count: int) -> list[str]:
    from tlsotp.pki.roles import Role
    from tlsotp.ttp.ca import TTPPaths
    from tlsotp.ttp.store import Store

    store = Store.open(TTPPaths(data_dir).db)
    try:
        now = datetime.datetime.now(datetime.timezone.utc)
        return [str(store.mint_token(f"{prefix}{i}.example", Role.CLIENT, ttl=datetime.timedelta(hours=1), now=now))
                for i in range(count)]
    finally:
        store.close()


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds on CPU of each live thread of ``pid`` (/proc/PID/task/TID/schedstat: exact,
    where psutil's user + system times tick in 10 ms)."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
    return times


def run_enroll_load(
    pid: int, ttp: str, fingerprint: str, tokens: list[str], base: Path, concurrency: int = 1, prepared: bool = False
) -> tuple[dict[int, int], int, float, str]:
    """One run of the load process (``benchmarks.server --enroll-load``) over ``tokens``: the
    nanoseconds each thread of ``pid`` spent meanwhile, the failed enrollments (all of them if it
    printed no result), the load process's own seconds (its start-up left out) and its stderr."""
    # The load process names each client c{i}.example: the tokens were minted for those names.
    before = thread_cpu_ns(pid)
    out = subprocess.run([sys.executable, "-m", "benchmarks.server", "--enroll-load", ttp, fingerprint, str(base),
                          json.dumps(tokens), str(concurrency), "prepared" if prepared else "real"],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    after = thread_cpu_ns(pid)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"failed": len(tokens), "seconds": 0.0}
    failed = int(result["failed"]) if out.returncode == 0 else max(int(result["failed"]), 1)
    spent = {tid: ns - before.get(tid, 0) for tid, ns in after.items()}
    return spent, failed, float(result["seconds"]), out.stderr[-2000:]


def enroll_batch(
    pid: int, ttp: str, fingerprint: str, tokens: list[str], base: Path, concurrency: int = 1, prepared: bool = False
) -> tuple[float, float, float]:
    """The daemon's CPU us per enrollment over one batch, in all and on its reactor (main)
    thread, and the batch's wall-clock ms per enrollment; exits if any enrollment failed."""
    spent, failed, wall, stderr = run_enroll_load(pid, ttp, fingerprint, tokens, base, concurrency, prepared)
    if failed:
        raise SystemExit(f"enrollments failed:\n{stderr}")
    count = len(tokens)
    return sum(spent.values()) / count / 1e3, spent.get(pid, 0) / count / 1e3, wall / count * 1e3


def durable_commit_us(rounds: int = 200, gap: float = 0.0) -> float:
    """CPU us of one committed row in WAL mode with synchronous=FULL (what each decision needs);
    with ``gap``, the process sleeps that long before each commit (only the commits are timed)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "x.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        spent = 0.0
        for i in range(rounds):
            if gap:
                time.sleep(gap)
            start = time.process_time()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?, ?)", (i, b"x" * 600))
            db.execute("COMMIT")
            spent += time.process_time() - start
        db.close()
    return spent / rounds * 1e6


def echo_server_main(hop: bool) -> None:
    """A bare Twisted server: one netstring in, one 1100-byte reply out, close (the TCP bound);
    with ``hop``, the reply is made on a one-thread pool first, as the TTP's worker does."""
    from twisted.internet import protocol
    from twisted.internet import reactor as global_reactor
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    reactor: Any = global_reactor  # the running one provides every reactor interface
    pool = ThreadPool(minthreads=1, maxthreads=1)
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)

    def reply() -> bytes:
        return b"1100:" + b"r" * 1100 + b","

    class Once(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            if hop:
                deferToThreadPool(reactor, pool, reply).addCallback(self.send)
            else:
                self.send(reply())

        def send(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    factory = protocol.Factory.forProtocol(Once)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def tcp_bound_us(count: int, *, hop: bool, gap: float = 0.0) -> float:
    """The bare server's CPU us per connection: connect, send ~700 bytes, read the reply, close;
    with ``gap``, the client waits that long before each connection (the server idles meanwhile)."""
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.ttp_enrollment", "--echo-server", str(hop)],
                              cwd=REPO, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        request = b"700:" + b"q" * 700 + b","
        for _ in range(20):  # warm-up
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(request)
                while s.recv(4096):
                    pass
        before = sum(thread_cpu_ns(server.pid).values())
        for _ in range(count):
            if gap:
                time.sleep(gap)
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(request)
                while s.recv(4096):
                    pass
        return (sum(thread_cpu_ns(server.pid).values()) - before) / count / 1e3
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


IDLE_FRAMES = ("EPollReactor.doPoll (twisted/internet/epollreactor.py:227)", "Condition.wait (threading.py:")


def profile_top(raw: Path, limit: int = 25) -> str:
    """The functions with the most samples (self and total) in a py-spy --format raw file, idle
    ones left out (py-spy counts a thread waiting in epoll or on the worker's queue as active)."""
    self_samples: dict[str, int] = {}
    total_samples: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_FRAMES):
            continue
        total += count
        self_samples[frames[-1]] = self_samples.get(frames[-1], 0) + count
        for frame in set(frames):
            total_samples[frame] = total_samples.get(frame, 0) + count
    lines = [f"{total} busy samples", "total%  self%  function"]
    for frame, count in sorted(total_samples.items(), key=lambda item: -item[1])[:limit]:
        lines.append(f"{100 * count / total:5.1f}  {100 * self_samples.get(frame, 0) / total:5.1f}  {frame}")
    lines += ["", "self%  function"]
    for frame, count in sorted(self_samples.items(), key=lambda item: -item[1])[:limit]:
        lines.append(f"{100 * count / total:5.1f}  {frame}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--enrollments", type=int, default=200, help="enrollments per batch")
    parser.add_argument("--concurrency", type=lambda text: [int(x) for x in text.split(",")], default=[1, 16],
                        help="comma-separated enrollments in flight at once, one batch each per repetition (1,16)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the last repetition into this directory")
    parser.add_argument("--gil", action="store_true",
                        help="with --profile: sample only the thread holding the GIL (Python's own CPU, not waits)")
    parser.add_argument("--prepared", action="store_true",
                        help="the load process makes every request (key, CSR, proof) before its batch starts and "
                             "sends it raw, so it can keep the TTP busy; each is still a full, new enrollment")
    args = parser.parse_args(argv)
    py_spy = None
    if args.profile is not None:
        # The venv's own bin first: py-spy installed beside this interpreter need not be on PATH.
        py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        if py_spy is None:
            print("--profile needs py-spy (pip install py-spy); not found beside this Python or on PATH",
                  file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="tlsotp-ttp-bench-"))
    ttp_process = None
    try:
        match = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(work / "ttp")))
        assert match, "no root fingerprint printed"
        fingerprint = match.group(0)
        port = free_port()
        ttp = f"tcp:host=127.0.0.1:port={port}"
        ttp_process = spawn([*TWISTD, "-n", "--pidfile", "", "--logfile", str(work / "ttp.log"), "tlsotp-ttp",
                             "--data-dir", str(work / "ttp"), "--listen", f"tcp:{port}:interface=127.0.0.1",
                             # One load process on one address: the per-address limit must not refuse it.
                             "--max-connections", "2048", "--max-per-address", "2048"],
                            work / "ttp.out")
        wait_listening(ttp_process, port, "the TTP")
        # One warm-up batch (imports, the first CRL, SQLite's page cache), not counted.
        enroll_batch(ttp_process.pid, ttp, fingerprint, mint(work / "ttp", "c", 10), work / "warm")
        shutil.rmtree(work / "warm", ignore_errors=True)
        last = (args.concurrency[-1], args.repetitions - 1)
        figures: dict[int, list[tuple[float, float, float]]] = {level: [] for level in args.concurrency}
        for repetition in range(args.repetitions):
            for level in args.concurrency:  # interleaved: each repetition runs every level once
                tokens = mint(work / "ttp", "c", args.enrollments)
                profiler = None
                if args.profile is not None and (level, repetition) == last:
                    assert py_spy is not None  # found above, or the run stopped there
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profiler = subprocess.Popen(
                        [py_spy, "record", *(["--gil"] if args.gil else []), "--pid", str(ttp_process.pid),
                         "--rate", "500", "--format", "raw", "-o", str(args.profile / "ttp.raw")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)  # attached before the batch starts
                batch = work / f"r{repetition}-{level}"
                figures[level].append(enroll_batch(ttp_process.pid, ttp, fingerprint, tokens, batch, level, args.prepared))
                if profiler is not None:
                    profiler.send_signal(2)
                    profiler.wait(60)
                # Fresh tokens for every batch, and the load process's client dirs removed.
                shutil.rmtree(batch, ignore_errors=True)
        floor = signing_floor_us()
        commit = durable_commit_us()
        tcp = tcp_bound_us(args.enrollments, hop=False)
        hop = tcp_bound_us(args.enrollments, hop=True)
        print(f"TTP enrollment, {args.enrollments} enrollments per batch at {', '.join(map(str, args.concurrency))} "
              f"concurrent, {args.repetitions} interleaved repetitions, EC P-256 root and keys; load: "
              + ("requests made before each batch and sent raw (each a full, new enrollment for the TTP)"
                 if args.prepared else "real enrollments (tlsotp.services.enrollment.enroll: key, CSR, files)"))
        bound = floor + commit + hop
        print(f"signing floor (CSR load + verify + sign, hot loop) {floor:.0f} us; one durable SQLite commit (WAL, "
              f"synchronous=FULL) {commit:.0f} us; one TCP request/reply in a bare Twisted server {tcp:.0f} us, {hop:.0f} "
              f"us with the reply made on a one-thread pool; floor + commit + that {bound:.0f} us = {bound / floor:.2f}x "
              f"the floor, the least a TTP built this way spends on one enrollment alone before any Python of its own")
        for level in args.concurrency:
            runs = figures[level]
            median = statistics.median(total for total, _, _ in runs)
            reactor = statistics.median(on_reactor for _, on_reactor, _ in runs)
            wall = statistics.median(ms for _, _, ms in runs)
            print(f"{level} concurrent: TTP CPU us/enrollment per repetition (all threads / reactor thread): "
                  + ", ".join(f"{total:.0f} / {on_reactor:.0f}" for total, on_reactor, _ in runs))
            print(f"  median {median:.0f} us, {median / floor:.2f}x the signing floor, {median / bound:.2f}x the bound; "
                  f"on the reactor thread {reactor:.0f} us, on the others {median - reactor:.0f} us; "
                  f"{1000 / wall:.0f} enrollments/s ({wall:.2f} ms each)")
            if level == 1:
                # Between two sequential enrollments the TTP waits for the load process (its key,
                # CSR and files): it starts each one cold. The same floor, timed with that wait
                # before each round, is what this machine charges for the primitives so.
                gap = max(wall - median / 1000, 0.5) / 1000
                cold = signing_floor_us(gap=gap)
                cold_bound = cold + durable_commit_us(gap=gap) + tcp_bound_us(args.enrollments, hop=True, gap=gap)
                print(f"  the same floor with the process idle {gap * 1000:.1f} ms before each round, as the TTP is "
                      f"between sequential enrollments: {cold:.0f} us ({cold / floor:.2f}x the hot loop), the TTP "
                      f"{median / cold:.2f}x that; the bound (floor + commit + bare server with the hop) timed the "
                      f"same way {cold_bound:.0f} us, the TTP {median / cold_bound:.2f}x that")
        if args.profile is not None and (args.profile / "ttp.raw").exists():
            top = profile_top(args.profile / "ttp.raw")
            (args.profile / "ttp.txt").write_text(top + "\n")
            print(top)
        return 0
    finally:
        if ttp_process is not None:
            stop(ttp_process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--echo-server"]:
        echo_server_main(sys.argv[2] == "True")
    else:
        sys.exit(main(sys.argv[1:]))
