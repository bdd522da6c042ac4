"""Bank servers on SQLite vs on one shared PostgreSQL database: sessions/s and CPU per session.

    pip install -e '.[test]'      # psycopg; PostgreSQL server binaries on the machine
    python benchmarks/postgres_servers.py [--concurrency 20] [--sessions 300] [--repetitions 2]

Starts a TTP, a throw-away PostgreSQL server (tests/postgres_cluster.py: initdb + pg_ctl in a
temporary directory, with fsync on) and three ``twistd -n tlsotp-server`` daemons
enrolled from the TTP: S on SQLite in its data dir, and A and B sharing one PostgreSQL database.
Each run drives: S alone, A alone, then A and B at once (one load generator each, the load
generator of benchmarks/daemon_vs_tls.py: fresh connection and full handshake per session, an
OTP request and grant). Reported: sessions/s, each server's CPU per session, and PostgreSQL's
CPU per session (the postmaster and its backends, from /proc). Not a test: on a shared 2-core
machine the load generators compete with the servers for the same cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo importable

from benchmarks import daemon_vs_tls as base  # noqa: E402  (the sibling benchmark: its daemons helpers and load generator)
from tests.postgres_cluster import PostgresCluster, find_binaries  # noqa: E402


def postgres_cpu(cluster: PostgresCluster) -> float:
    """utime + stime of the postmaster and every process it forked (the backends, the writers)."""
    postmaster = cluster.postmaster_pid()
    total = base.cpu_seconds(postmaster)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                total += base.cpu_seconds(int(entry))
    return total


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=300, help="sessions per load generator per run")
    parser.add_argument("--repetitions", type=int, default=2)
    args = parser.parse_args(argv)
    binaries = find_binaries()
    if binaries is None:
        raise SystemExit("no PostgreSQL server binaries found")
    work = Path(tempfile.mkdtemp(prefix="tlsotp-pgbench-"))
    processes: list[Any] = []
    cluster = PostgresCluster(binaries)
    try:
        cluster.start(fsync=True)  # the tests' server runs with fsync=off; this one syncs its WAL
        url = cluster.create_database("bench")
        init = base.tlsotp("ttp", "init", "--data-dir", str(work / "ttp"))
        match = re.search(r"sha256:[0-9a-f]{64}", init)
        assert match, init
        fingerprint = match.group(0)

        def token(name: str, role: str) -> str:
            return base.tlsotp("ttp", "token", "--data-dir", str(work / "ttp"), "--name", name, "--role", role).strip().splitlines()[-1]

        ttp_port = base.free_port()
        ttp = f"tcp:host=127.0.0.1:port={ttp_port}"
        processes.append(base.spawn([*base.TWISTD, "-n", "--pidfile", "", "--logfile", str(work / "ttp.log"), "tlsotp-ttp",
                                     "--data-dir", str(work / "ttp"), "--listen", f"tcp:{ttp_port}:interface=127.0.0.1:backlog=1024"],
                                    work / "ttp.out"))
        base.wait_listening(processes[-1], ttp_port, "the TTP")
        servers: dict[str, tuple[Any, int]] = {}
        for name in ("S", "A", "B"):
            port = base.free_port()
            data_dir = work / f"server-{name}"
            extra = [] if name == "S" else ["--database", url]
            if name == "B":
                data_dir.mkdir(mode=0o700)
                shutil.copyfile(work / "server-A" / "otp-pepper.bin", data_dir / "otp-pepper.bin")
                os.chmod(data_dir / "otp-pepper.bin", 0o600)
            process = base.spawn([
                *base.TWISTD, "-n", "--pidfile", "", "--logfile", str(work / f"server-{name}.log"), "tlsotp-server",
                "--data-dir", str(data_dir), "--name", "bank.example",
                "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024", "--ttp", ttp,
                "--ca-fingerprint", fingerprint, "--token", token("bank.example", "server"), "--key-type", "ec-p256",
                "--max-connections", "1024", "--max-per-address", "1024", *extra,
            ], work / f"server-{name}.out")
            processes.append(process)
            base.wait_listening(process, port, f"server {name}")
            servers[name] = (process, port)
        base.tlsotp("enroll", "--data-dir", str(work / "client"), "--ttp", ttp, "--ca-fingerprint", fingerprint,
                    "--token", token("alice.example", "client"), "--name", "alice.example", "--role", "client",
                    "--key-type", "ec-p256")
        base.tlsotp("crl", "--data-dir", str(work / "client"), "--ttp", ttp)
        for name in servers:
            base.load("tlsotp", work, servers[name][1], "bank.example", 5, 20, f"warm{name}")
        rows: dict[str, list[dict[str, float]]] = {"SQLite, 1 server": [], "PostgreSQL, 1 server": [], "PostgreSQL, 2 servers": []}
        for rep in range(args.repetitions):
            for label, names in (("SQLite, 1 server", "S"), ("PostgreSQL, 1 server", "A"), ("PostgreSQL, 2 servers", "AB")):
                before = {n: base.cpu_seconds(servers[n][0].pid) for n in names}
                pg_before = postgres_cpu(cluster)
                results: dict[str, dict[str, Any]] = {}

                def drive(n: str, tag: str) -> None:
                    results[n] = base.load("tlsotp", work, servers[n][1], "bank.example", args.concurrency, args.sessions, tag)

                threads = [threading.Thread(target=drive, args=(n, f"{rep}{label[:2]}{n}")) for n in names]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                pg_after = postgres_cpu(cluster)
                done = sum(len(r["latencies"]) for r in results.values())
                failed = sum(r["failed"] for r in results.values())
                elapsed = max(r["elapsed"] for r in results.values())
                server_cpu = sum(base.cpu_seconds(servers[n][0].pid) - before[n] for n in names)
                row = {
                    "rate": done / elapsed, "server_us": server_cpu / max(done, 1) * 1e6,
                    "pg_us": (pg_after - pg_before) / max(done, 1) * 1e6 if names != "S" else 0.0,
                    "load_us": sum(r["cpu"] for r in results.values()) / max(done, 1) * 1e6, "failed": failed,
                }
                rows[label].append(row)
                print(f"run {rep + 1} {label:<22} {done} sessions, {failed} failed: {row['rate']:.1f} sessions/s, "
                      f"server CPU {row['server_us']:.0f} us/session, PostgreSQL CPU {row['pg_us']:.0f} us/session, "
                      f"load generator CPU {row['load_us']:.0f} us/session", flush=True)
        print()
        print(f"{args.repetitions} repetitions, {args.sessions} sessions per load generator at {args.concurrency} concurrent; medians")
        for label, mine in rows.items():
            med = {k: statistics.median(r[k] for r in mine) for k in ("rate", "server_us", "pg_us", "load_us")}
            print(f"{label:<22} {med['rate']:7.1f} sessions/s  server CPU {med['server_us']:6.0f} us/session  "
                  f"PostgreSQL CPU {med['pg_us']:5.0f} us/session  load generator CPU {med['load_us']:6.0f} us/session")
        return 0
    finally:
        for process in reversed(processes):
            base.stop(process)
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
