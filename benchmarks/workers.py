"""``twistd -n tlsotp-server --workers N`` under a load that saturates the machine.

    pip install -e '.[bench]'
    python -m benchmarks.workers [--workers 1,2] [--sessions 3000] [--repetitions 3] [--concurrency 50]
                                 [--load-processes CORES] [--paced 0.6] [--postgres]

Starts a TTP and, for each N of ``--workers`` (a scan: ``--workers 1,2,4,8``), a freshly
enrolled ``twistd -n tlsotp-server --workers N`` (EC P-256, default suites), all of them at
once. For each of ``--repetitions`` rounds, each server in turn (interleaved, the order reversed
every other round: 1, 2, 2, 1, 1, 2, ...), ``--load-processes`` load generators (one per core by
default) run ``--sessions`` sessions in all, ``--concurrency`` at a time in all, each a fresh
connection: handshake + OTP request + grant, committed by the server. Printed per run, then as
medians over the repetitions, per N: sessions/s, server CPU per session (psutil over the
supervisor's whole process tree, workers included), the supervisor's own part of it, the load
generators' CPU per session, the share of sessions each worker served (from the per-session
lines of the server's log), and the machine's bound: cores / (server CPU per session + load
generator CPU per session), the rate the machine allows when server and load share its cores.

Then (``--paced``, 0.6 by default) every worker count runs again, interleaved, at one and the
same rate: that fraction of one worker's median saturating rate, so each does the same work
per second and neither saturates. Last, the machine's own contention: a fixed piece of
CPU-bound work timed in one process alone and in one process per core at once. Each row also
gives the server's context switches per session (a sleep and a wake-up each), and each ratio to
one worker a control: the load generators' unchanged work per session, whose own ratio is what
the machine adds to every process. After the servers stop, each one's OTP store lock waits (the
"OTP store ...: N of M group transactions waited" lines of its log, summed).

With ``--postgres`` the servers keep their OTPs in a PostgreSQL server started for the run
(``tests/postgres_cluster.py``, fsync on; one database per server), and the CPU of its
postmaster and backends during each run is counted as the server's (and printed apart).

The load generator cuts its own cost, never the server's: it verifies the server's certificate
chain (path, CRL) once and then accepts that same chain by its DER, and it makes its ECDHE key
shares before the clock starts. Every session is still a full, fresh handshake for the server
(new key shares, new randoms, the client's certificate verified, a CertificateVerify checked).
Not a test: on a shared machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cryptography.hazmat.primitives.serialization import Encoding

if __package__ in (None, ""):  # run as a script (python benchmarks/workers.py): the checkout is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.daemon_vs_tls import (  # noqa: E402
    BURST,
    REPO,
    TWISTD,
    burst_ms,
    env,
    free_port,
    spawn,
    stop,
    tlsotp,
    wait_listening,
)

SELF = [sys.executable, str(Path(__file__).resolve())]
#: What the server logs once per session served (the transaction itself is never logged).
ISSUED = re.compile(r"^.*issued an OTP to .*$", re.M)
WORKER = re.compile(r"worker (\d+) \(pid \d+\): ")
LOCK_WAITS = re.compile(r"OTP store .*: (?P<waited>\d+) of (?P<transactions>\d+) group transactions waited over "
                        r"[\d.]+ ms for the write lock \((?P<ms>\d+) ms in all\)")
SWITCHES = re.compile(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)$", re.M)
CHEAPER = ("load generator: the server's chain is verified once, then trusted by its DER; ECDHE key shares "
           "are made before the clock starts; every session is a full, fresh handshake for the server")


# -- the load generator (a subprocess of this script) -----------------------------------------


def load_main(argv: list[str]) -> None:
    """Prepare, say "ready", wait for "go" on stdin, run the sessions; one JSON line out."""
    from twisted.internet import defer, task

    data_dir, port, server_name, concurrency, sessions, tag, rate = argv
    per_second = float(rate)  # this process's sessions started per second; 0: as fast as it can
    settings = cheap_settings(Path(data_dir), server_name, int(sessions))
    endpoint = f"tcp:host=127.0.0.1:port={port}"

    async def body(reactor: Any) -> None:
        from tlsotp.client import request_otp

        failures: list[str] = []
        done = [0]
        began = [0.0]
        indices = iter(range(int(sessions)))

        async def one_at_a_time() -> None:
            for i in indices:
                if per_second:  # paced: session i starts no earlier than i / rate after the go
                    wait = began[0] + i / per_second - time.perf_counter()
                    if wait > 0:
                        await task.deferLater(reactor, wait, lambda: None)
                try:
                    await request_otp(reactor, endpoint, settings, f"bench-{tag}-{i}")
                except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                done[0] += 1

        print("ready", flush=True)
        sys.stdin.readline()
        began[0] = time.perf_counter()
        cpu = time.process_time()
        await defer.gatherResults([defer.Deferred.fromCoroutine(one_at_a_time()) for _ in range(int(concurrency))])
        print(json.dumps({"elapsed": time.perf_counter() - began[0], "done": done[0], "failed": len(failures),
                          "failures": failures[:5], "cpu": time.process_time() - cpu}), flush=True)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))


def cheap_settings(data_dir: Path, server_name: str, sessions: int) -> Any:
    """Client settings whose one configuration trusts the first verified chain again by its
    DER and draws ECDHE keys made in advance (see the module doc)."""
    from tlsotp.client import ClientSettings, load_credentials
    from tlsotp.handshake import ClientConfig, generate_ephemeral_key
    from tlsotp.handshake.suites import groups_of
    from tlsotp.pki import pem
    from tlsotp.pki.roles import Role
    from tlsotp.pki.verify import PeerVerifier

    credentials = load_credentials(data_dir)
    assert credentials is not None
    crl = pem.load_crl(data_dir / "crl.pem")
    verifier = PeerVerifier(credentials.root, Role.SERVER, expected_names=[server_name], crl=crl)
    trusted: list[tuple[bytes, ...]] = []

    def validate_once(chain: Any) -> None:
        encoded = tuple(cert.public_bytes(Encoding.DER) for cert in chain)
        if encoded in trusted:
            return
        verifier(chain)
        trusted.append(encoded)

    base = ClientSettings(credentials.key, credentials.chain, credentials.root, server_name, crl, timeout_seconds=120)
    keys = {group: [generate_ephemeral_key(group) for _ in range(sessions + 10)] for group in groups_of(base.suites)}
    config = ClientConfig(
        certificate_chain=tuple(credentials.chain), private_key=credentials.key, validate_peer=validate_once,
        suites=tuple(base.suites), ephemeral_keys=lambda group: keys[group].pop(),
    )

    class Prepared(ClientSettings):
        def client_config(self) -> ClientConfig:
            return config

    return Prepared(credentials.key, credentials.chain, credentials.root, server_name, crl, timeout_seconds=120)


# -- the orchestration ------------------------------------------------------------------------


def tree_cpu(pid: int) -> tuple[float, float, int]:
    """(CPU seconds of the process and its live descendants, of the process alone, context
    switches of every thread of them all)."""
    import psutil

    root = psutil.Process(pid)
    own = sum(root.cpu_times()[:2])
    total, switches = own, thread_switches(pid)
    for child in root.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
            switches += thread_switches(child.pid)
        except psutil.NoSuchProcess:
            pass
    return total, own, switches


def thread_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of a process, from
    ``/proc/PID/task/*/status`` (psutil's count is the main thread's alone); -1 where there is
    no ``/proc``. Each voluntary one is a sleep and a wake-up, which the CPU figures pay for."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return -1
    count = 0
    for status in tasks.glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended meanwhile
            continue
        count += sum(int(n) for n in SWITCHES.findall(text))
    return count


def served_by(log: str) -> dict[str, int]:
    """Sessions per worker in a stretch of the server's log ("-" for a single process)."""
    counts: dict[str, int] = {}
    for line in ISSUED.findall(log):
        match = WORKER.search(line)
        key = match.group(1) if match else "-"
        counts[key] = counts.get(key, 0) + 1
    return counts


def start_server(work: Path, ttp_dir: Path, ttp: str, fingerprint: str, workers: int,
                 args: argparse.Namespace, extra: Sequence[str] = (), postgres_pid: int | None = None
                 ) -> dict[str, Any]:
    """A freshly enrolled ``twistd -n tlsotp-server --workers N`` (``extra``: more of its
    options), listening and warmed up; ``postgres_pid``: the postmaster whose CPU is the server's too."""
    name = "bank.example"
    token = tlsotp("ttp", "token", "--data-dir", str(ttp_dir), "--name", name, "--role", "server").strip().splitlines()[-1]
    port = free_port()
    log_path = work / f"server-{workers}.log"
    server = spawn([
        *TWISTD, "-n", "--pidfile", "", "--logfile", str(log_path), "tlsotp-server",
        "--data-dir", str(work / f"server-{workers}"), "--name", name,
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024", "--ttp", ttp,
        "--ca-fingerprint", fingerprint, "--token", token, "--key-type", "ec-p256",
        "--max-connections", "1024", "--max-per-address", "1024", "--workers", str(workers), *extra,
    ], work / f"server-{workers}.out")
    target = {"workers": workers, "process": server, "port": port, "log": log_path, "name": name,
              "postgres_pid": postgres_pid}
    try:
        wait_listening(server, port, f"the server with {workers} worker(s)")
        poll_for(lambda: "listening on" in log_path.read_text(), 60)
        # Warm-up (imports, first database pages), not measured.
        drive(work, port, name, min(10, args.concurrency), 20 * workers, 1, "warm")
    except BaseException:
        stop(server)
        raise
    return target


def run_one(work: Path, target: dict[str, Any], args: argparse.Namespace, tag: str, rate: float = 0.0) -> dict[str, Any]:
    """One measured run of ``--sessions`` sessions against a started server (``rate``: paced at
    that many sessions/s in all; 0: as fast as the load generators go)."""
    server, port, log_path, name, workers = target["process"], target["port"], target["log"], target["name"], target["workers"]
    log_before = len(whole_log(log_path))
    postgres = target.get("postgres_pid")
    postgres_before = tree_cpu(postgres)[0] if postgres else 0.0
    cpu_before, own_before, switches_before = tree_cpu(server.pid)
    result = drive(work, port, name, args.concurrency, args.sessions, args.load_processes, f"w{workers}-{tag}", rate)
    cpu_after, own_after, switches_after = tree_cpu(server.pid)
    # PostgreSQL's backends do the store's work: the server's CPU, counted with it.
    postgres_s = tree_cpu(postgres)[0] - postgres_before if postgres else 0.0
    cpu_after += postgres_s
    done = result["done"]
    poll_for(lambda: sum(served_by(whole_log(log_path)[log_before:]).values()) >= done, 30)
    shares = served_by(whole_log(log_path)[log_before:])
    cores = os.cpu_count() or 1
    server_us = (cpu_after - cpu_before) / max(done, 1) * 1e6
    load_us = result["cpu"] / max(done, 1) * 1e6
    bound = cores / ((server_us + load_us) / 1e6) if done else float("nan")
    return {
        "workers": workers, "sessions": done, "failed": result["failed"], "failures": result["failures"],
        "rate": done / result["elapsed"], "server_us": server_us,
        "supervisor_us": (own_after - own_before) / max(done, 1) * 1e6 if workers > 1 else float("nan"),
        "load_us": load_us, "bound": bound, "cores": cores,
        "postgres_us": postgres_s / max(done, 1) * 1e6 if postgres else math.nan,
        "switches": (switches_after - switches_before) / max(done, 1) if switches_before >= 0 else float("nan"),
        "shares": {k: v / max(1, sum(shares.values())) for k, v in sorted(shares.items())},
    }


def run_rounds(work: Path, targets: list[dict[str, Any]], args: argparse.Namespace, label: str,
               rate: float) -> tuple[dict[int, list[dict[str, Any]]], bool]:
    """``--repetitions`` rounds of ``run_one`` over every server, interleaved with the order
    reversed every other round (1, 2, 2, 1, ...), so a machine whose speed drifts during the run
    weighs on every server alike; each run printed as it ends. Returns the runs per worker count
    and whether any session failed."""
    runs: dict[int, list[dict[str, Any]]] = {target["workers"]: [] for target in targets}
    failed = False
    for rep in range(1, args.repetitions + 1):
        for target in targets if rep % 2 else targets[::-1]:
            row = run_one(work, target, args, f"{label.strip()}{rep}", rate)
            runs[target["workers"]].append(row)
            if row["failed"] or row["sessions"] != args.sessions:
                failed = True
                print(f"--workers {row['workers']} {label}run {rep}: {row['failed']} sessions failed: "
                      f"{row['failures']}", file=sys.stderr)
            print(f"{label}run {rep} {render(row)}", flush=True)
    return runs, failed


def whole_log(path: Path) -> str:
    """The server's log from its start: twistd's ``--logfile`` rotates at 1 MB (``server.log.1``
    is the newest rotated part, higher numbers older), so a run's lines may span several files."""
    rotated = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: int(p.suffix[1:]), reverse=True)
    return "".join(p.read_text() for p in rotated) + path.read_text()


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the repetitions (shares: the repetitions' sessions pooled)."""
    row = dict(rows[0])
    for key in ("rate", "server_us", "supervisor_us", "load_us", "bound", "switches"):
        row[key] = statistics.median(r[key] for r in rows)
    row["postgres_us"] = statistics.median(r.get("postgres_us", math.nan) for r in rows)
    row["sessions"], row["failed"] = sum(r["sessions"] for r in rows), sum(r["failed"] for r in rows)
    pooled: dict[str, float] = {}
    for r in rows:
        for k, v in r["shares"].items():
            pooled[k] = pooled.get(k, 0.0) + v / len(rows)
    row["shares"] = pooled
    return row


def drive(work: Path, port: int, name: str, concurrency: int, sessions: int, processes: int, tag: str,
          rate: float = 0.0) -> dict[str, Any]:
    """``processes`` load generators started together; their results summed (elapsed: the longest).
    ``rate`` (sessions/s in all, split evenly) paces them; 0 lets them run flat out."""
    share = [sessions // processes + (1 if i < sessions % processes else 0) for i in range(processes)]
    each = [max(1, concurrency // processes + (1 if i < concurrency % processes else 0)) for i in range(processes)]
    loads = [
        subprocess.Popen(
            [*SELF, "--load", str(work / "client"), str(port), name, str(each[i]), str(share[i]), f"{tag}-{i}",
             str(rate * share[i] / sessions)],
            cwd=REPO, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(processes)
    ]
    try:
        for load in loads:
            assert load.stdout is not None
            if load.stdout.readline().strip() != "ready":
                raise SystemExit(f"a load generator failed to start:\n{load.communicate()[1][-3000:]}")
        began = time.perf_counter()
        for load in loads:
            assert load.stdin is not None
            load.stdin.write("go\n")
            load.stdin.flush()
        results = []
        for load in loads:
            out, err = load.communicate(timeout=600)
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if not lines:
                raise SystemExit(f"a load generator failed ({load.returncode}):\n{err[-3000:]}")
            results.append(json.loads(lines[-1]))
        elapsed = time.perf_counter() - began
    finally:
        for load in loads:
            if load.poll() is None:
                load.kill()
                load.wait()
    return {
        "elapsed": elapsed, "done": sum(r["done"] for r in results), "failed": sum(r["failed"] for r in results),
        "failures": [f for r in results for f in r["failures"]][:5], "cpu": sum(r["cpu"] for r in results),
    }


def report(counts: list[int], runs: dict[int, list[dict[str, Any]]]) -> None:
    """The medians per worker count, and each count's ratios to the first (one worker)."""
    rows = [median_row(runs[n]) for n in counts]
    for row in rows:
        print(render(row), flush=True)
    if len(rows) > 1 and rows[0]["workers"] == 1:
        one = rows[0]
        for row in rows[1:]:
            n = row["workers"]
            per_rep = [r["server_us"] / o["server_us"] for r, o in zip(runs[n], runs[1])]
            print(f"--workers {n} vs 1: server CPU per session {row['server_us'] / one['server_us']:.2f}x (the medians' "
                  f"ratio; per repetition {', '.join(f'{x:.2f}x' for x in per_rep)}, their median "
                  f"{statistics.median(per_rep):.2f}x), sessions/s {row['rate'] / one['rate']:.2f}x (the load "
                  f"generator's unchanged work: {row['load_us'] / one['load_us']:.2f}x CPU per session; the cores "
                  f"busy {one['rate'] / one['bound']:.0%} and {row['rate'] / row['bound']:.0%} of the time), context "
                  f"switches per session {one['switches']:.1f} -> {row['switches']:.1f}", flush=True)
            # The load generators are the control: their work per session is the same for every
            # worker count, so what their CPU per session does is what the machine does to any
            # process once the server runs N workers on the same cores.
            server, control = row["server_us"] / one["server_us"], row["load_us"] / one["load_us"]
            print(f"  the machine's share of it: the load generators' unchanged work ran {control:.2f}x as long beside "
                  f"{n} workers as beside one; the server's {server:.2f}x divided by that is {server / control:.2f}x, "
                  f"what {n} workers add beyond what the machine adds to every process", flush=True)


def corun_work(out: Any) -> None:
    """A fixed amount of CPU-bound work (C and Python); its CPU time on ``out``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    table: dict[str, int] = {}
    began = time.process_time()
    for i in range(1500):
        key.sign(b"x" * 100, ec.ECDSA(hashes.SHA256()))
        for j in range(200):
            table[str(j * i)] = j
        table.clear()
    out.put(time.process_time() - began)


def corun_cpu(rounds: int = 3) -> tuple[float, float]:
    """(median CPU of ``corun_work`` alone, median CPU of each copy when one runs per core)."""
    import multiprocessing

    cores = os.cpu_count() or 1
    alone: list[float] = []
    together: list[float] = []
    for _ in range(rounds):
        for n, into in ((1, alone), (cores, together)):
            results: Any = multiprocessing.Queue()
            copies = [multiprocessing.Process(target=corun_work, args=(results,)) for _ in range(n)]
            for copy in copies:
                copy.start()
            into.extend(results.get(timeout=120) for _ in copies)
            for copy in copies:
                copy.join()
    return statistics.median(alone), statistics.median(together)


def poll_for(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def render(row: dict[str, Any]) -> str:
    shares = ", ".join(f"{'worker ' + k if k != '-' else 'one process'} {v:.0%}" for k, v in row["shares"].items())
    supervisor = f" (supervisor {row['supervisor_us']:.0f})" if row["workers"] > 1 else ""
    if not math.isnan(row.get("postgres_us", math.nan)):  # --postgres: PostgreSQL's share
        supervisor += f" (PostgreSQL {row['postgres_us']:.0f})"
    return (f"--workers {row['workers']}: {row['sessions']} sessions, {row['rate']:.1f} sessions/s; server CPU "
            f"{row['server_us']:.0f} us/session{supervisor}, {row['switches']:.1f} context switches/session; "
            f"load generator CPU {row['load_us']:.0f} us/session; "
            f"machine's bound {row['bound']:.1f} sessions/s ({row['cores']} cores), reached "
            f"{row['rate'] / row['bound']:.0%}; served: {shares}")


def lock_waits_in(log: str) -> tuple[int, int, float]:
    """(group transactions that waited for the write lock, all group transactions, ms waited),
    summed over the "OTP store ...: N of M group transactions waited" lines each OTP store
    (each worker's, the supervisor's) logs when it closes."""
    waited = transactions = 0
    ms = 0.0
    for found in LOCK_WAITS.finditer(log):
        waited += int(found["waited"])
        transactions += int(found["transactions"])
        ms += float(found["ms"])
    return waited, transactions, ms


def lock_waits_line(workers: int, waits: tuple[int, int, float]) -> str:
    waited, transactions, ms = waits
    if not transactions:
        return f"--workers {workers}: no SQLite OTP store logged its transactions (with --postgres, none has one)"
    return (f"--workers {workers}: {waited} of {transactions} OTP group transactions "
            f"({waited / transactions:.1%}) waited over 1 ms for the write lock, {ms:.0f} ms in all, "
            f"over the whole run of this server (with one process alone on the file, what shows is Python's "
            f"own lock handed back late)")


@dataclass
class WorkersOutcome:
    """What ``workers_mode`` measured, per worker count."""

    runs: dict[int, list[dict[str, Any]]]  # the saturating rounds
    paced: dict[int, list[dict[str, Any]]]  # the paced ones (empty without --paced)
    pace: float  # their rate in sessions/s, or 0
    failed: bool  # whether any session failed
    lock_waits: dict[int, tuple[int, int, float]]  # the OTP store's, over the server's whole run
    # ms until a burst of BURST connects was all accepted: the first the fresh server took, then a
    # second (the daemons' burst in benchmarks.server follows 500 idle connections, so it is a second)
    bursts: dict[int, tuple[float, float]]


def workers_mode(work: Path, ttp_dir: Path, ttp: str, fingerprint: str, args: argparse.Namespace
                 ) -> WorkersOutcome:
    """The whole measurement against a running TTP (``ttp_dir`` its data dir, for tokens): a
    client enrolled into ``work``, a server per worker count of ``args.workers``, two bursts of
    ``BURST`` connects at each (timed until all were accepted; the shared listening socket's
    one accept queue; the first a fresh process takes also grows its heap), the saturating
    rounds, then (``args.paced``) the paced ones. The lock waits are read from each server's log
    once it stopped; all printed here. ``benchmarks.server`` runs it too."""
    counts = [int(n) for n in args.workers.split(",")]
    client_token = tlsotp("ttp", "token", "--data-dir", str(ttp_dir), "--name", "alice.example",
                          "--role", "client").strip().splitlines()[-1]
    tlsotp("enroll", "--data-dir", str(work / "client"), "--ttp", ttp, "--ca-fingerprint", fingerprint,
           "--token", client_token, "--name", "alice.example", "--role", "client", "--key-type", "ec-p256")
    tlsotp("crl", "--data-dir", str(work / "client"), "--ttp", ttp)
    print(f"{args.sessions} sessions per configuration, {args.concurrency} concurrent over "
          f"{args.load_processes} load generator process(es); EC P-256, default suites; data dirs in {work}",
          flush=True)
    print(CHEAPER, flush=True)
    targets = []
    cluster = None
    try:
        if getattr(args, "postgres", False):
            from tests.postgres_cluster import PostgresCluster, find_binaries

            binaries = find_binaries()
            if binaries is None:
                raise SystemExit("--postgres: no PostgreSQL server binaries on PATH or in /usr/lib/postgresql/*/bin")
            cluster = PostgresCluster(binaries)
            cluster.start(fsync=True)
            postmaster = cluster.postmaster_pid()
            print(f"OTP store: PostgreSQL {binaries} (fsync on), one database per server; its CPU (the "
                  f"postmaster and its backends) is counted in the server's", flush=True)
        for n in counts:
            if cluster is None:
                targets.append(start_server(work, ttp_dir, ttp, fingerprint, n, args))
            else:
                targets.append(start_server(work, ttp_dir, ttp, fingerprint, n, args,
                                            ("--database", cluster.create_database(f"workers{n}")), postmaster))
        bursts: dict[int, tuple[float, float]] = {}
        for target in targets:
            timed = []
            for which in ("first", "second"):
                print(f"--workers {target['workers']}, {which} burst: ", end="", flush=True)
                timed.append(burst_ms(target["port"], BURST))
                time.sleep(1.0)  # the server sees the burst's connections close before anything else
            bursts[target["workers"]] = (timed[0], timed[1])
        runs, failed_saturating = run_rounds(work, targets, args, "", 0.0)
        pace = args.paced * statistics.median(r["rate"] for r in runs[counts[0]]) if args.paced else 0.0
        # The same rate for every worker count.
        paced, failed_paced = run_rounds(work, targets, args, "paced ", pace) if pace else ({}, False)
    finally:
        for target in targets:
            stop(target["process"])
        if cluster is not None:
            cluster.destroy()
    waits = {target["workers"]: lock_waits_in(whole_log(target["log"])) for target in targets}
    print()
    for n, found in waits.items():
        print(lock_waits_line(n, found), flush=True)
    return WorkersOutcome(runs, paced, pace, failed_saturating or failed_paced, waits, bursts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to run (a scan)")
    parser.add_argument("--sessions", type=int, default=3000, help="sessions per configuration and repetition")
    parser.add_argument("--repetitions", type=int, default=3, help="interleaved repetitions (medians reported)")
    parser.add_argument("--concurrency", type=int, default=50, help="sessions at a time, over all load generators")
    parser.add_argument("--load-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data dirs)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the data dirs go (default: the system's temporary directory); a tmpfs "
                             "such as /dev/shm takes the OTP store's fsync out of the measurement")
    parser.add_argument("--postgres", action="store_true",
                        help="keep the OTPs in a PostgreSQL server started for the run (its binaries on the "
                             "machine; fsync on) instead of each server's SQLite file; its CPU counts as the server's")
    parser.add_argument("--paced", type=float, default=0.6,
                        help="then run every worker count again at this fraction of one worker's saturating "
                             "rate, the same rate for all (0: skip)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tlsotp-workers-bench-", dir=args.work_dir))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        init = tlsotp("ttp", "init", "--data-dir", str(work / "ttp"))
        match = re.search(r"sha256:[0-9a-f]{64}", init)
        assert match, init
        fingerprint = match.group(0)
        ttp_port = free_port()
        ttp = f"tcp:host=127.0.0.1:port={ttp_port}"
        processes.append(spawn([*TWISTD, "-n", "--pidfile", "", "--logfile", str(work / "ttp.log"), "tlsotp-ttp",
                                "--data-dir", str(work / "ttp"), "--listen", f"tcp:{ttp_port}:interface=127.0.0.1"],
                               work / "ttp.out"))
        wait_listening(processes[-1], ttp_port, "the TTP")
        outcome = workers_mode(work, work / "ttp", ttp, fingerprint, args)
        runs, paced, pace = outcome.runs, outcome.paced, outcome.pace
        print()
        print(f"medians of {args.repetitions} interleaved repetition(s), saturating load:")
        report(counts, runs)
        if pace:
            print()
            print(f"medians of {args.repetitions} interleaved repetition(s), every worker count paced at {pace:.0f} "
                  f"sessions/s ({args.paced:.0%} of {counts[0]} worker(s)' saturating rate), below what either "
                  f"reaches flat out, the same work for each; what differs is what splitting it over processes adds:")
            report(counts, paced)
        print()
        print(corun_line(*corun_cpu()), flush=True)
        return 1 if outcome.failed else 0
    finally:
        for process in reversed(processes):
            stop(process)
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def corun_line(alone: float, together: float) -> str:
    return (f"the machine's own contention: the same CPU-bound work (ECDSA signatures and dict churn) took "
            f"{alone * 1e3:.0f} ms of CPU in one process alone and {together * 1e3:.0f} ms in each of "
            f"{os.cpu_count() or 1} at once, {together / alone:.2f}x: the cores slow each other down when both are "
            f"busy (shared caches, memory bandwidth, a virtual machine's host), which a busier machine pays on every "
            f"process, server and load generator alike")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        load_main(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
