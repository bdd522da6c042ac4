"""A/B of the bank server's CPU per session: two source trees' real ``twistd tlsotp-server``.

    python -m benchmarks.server_ab OLD_TREE,NEW_TREE [--concurrency 50] [--sessions 1000] [--repetitions 6]

Each tree (a checkout, e.g. ``git worktree add /tmp/old main``) runs its own server daemon
(``PYTHONPATH=TREE``), both enrolled from one TTP; the same load generator as
``benchmarks.server`` (a separate process, a fresh connection and full handshake per session,
handshake + OTP request + grant) drives them in turn, the order alternating per repetition.
Prints each run's server CPU per session (psutil, the daemon's process tree), the medians and
the per-repetition ratio NEW/OLD. ``--hold`` prints the daemons' pids after the warm-up (to
attach ``py-spy record --pid PID``). Not a test; on a shared machine compare within one run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.daemon_vs_tls import TWISTD, free_port, load, stop, tlsotp, wait_listening
from benchmarks.server import tree_cpu


def tree_env(tree: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = tree
    return env


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", help="comma-separated source trees, e.g. /tmp/old,.")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--repetitions", type=int, default=6)
    parser.add_argument("--hold", action="store_true", help="print the server pids after the warm-up")
    args = parser.parse_args(argv)
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tlsotp-ab-"))
    processes: list[Any] = []
    try:
        match = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(work / "ttp")))
        assert match is not None
        fingerprint = match.group(0)

        def token(name: str, role: str) -> str:
            out = tlsotp("ttp", "token", "--data-dir", str(work / "ttp"), "--name", name, "--role", role)
            return out.strip().splitlines()[-1]

        ttp_port = free_port()
        ttp = f"tcp:host=127.0.0.1:port={ttp_port}"
        processes.append(subprocess.Popen(
            [*TWISTD, "-n", "--pidfile", "", "--logfile", str(work / "ttp.log"), "tlsotp-ttp", "--data-dir",
             str(work / "ttp"), "--listen", f"tcp:{ttp_port}:interface=127.0.0.1"],
            cwd=trees[-1], env=tree_env(trees[-1]), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        wait_listening(processes[-1], ttp_port, "the TTP")
        servers = []
        for i, tree in enumerate(trees):
            port = free_port()
            process = subprocess.Popen([
                *TWISTD, "-n", "--pidfile", "", "--logfile", str(work / f"server{i}.log"), "tlsotp-server",
                "--data-dir", str(work / f"server{i}"), "--name", "bank.example",
                "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024", "--ttp", ttp,
                "--ca-fingerprint", fingerprint, "--token", token("bank.example", "server"), "--key-type", "ec-p256",
                "--max-connections", "2048", "--max-per-address", "2048",
            ], cwd=tree, env=tree_env(tree), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            processes.append(process)
            servers.append((tree, process, port))
        tlsotp("enroll", "--data-dir", str(work / "client"), "--ttp", ttp, "--ca-fingerprint", fingerprint,
               "--token", token("alice.example", "client"), "--name", "alice.example", "--role", "client",
               "--key-type", "ec-p256")
        tlsotp("crl", "--data-dir", str(work / "client"), "--ttp", ttp)
        for tree, process, port in servers:
            wait_listening(process, port, tree)
            load("tlsotp", work, port, "bank.example", 5, 40, f"warm{port}")
        if args.hold:
            print("server pids", " ".join(str(p.pid) for _, p, _ in servers), flush=True)
        cpu: dict[str, list[float]] = {tree: [] for tree in trees}
        for rep in range(args.repetitions):
            for tree, process, port in servers if rep % 2 == 0 else servers[::-1]:
                before = tree_cpu(process.pid)
                result = load("tlsotp", work, port, "bank.example", args.concurrency, args.sessions, f"{rep}-{port}")
                after = tree_cpu(process.pid)
                if result["failed"] or len(result["latencies"]) != args.sessions:
                    print(f"{tree}: {result['failed']} failed: {result['failures']}", file=sys.stderr)
                    return 1
                cpu[tree].append((after - before) / args.sessions * 1e6)
                print(f"run {rep} {tree}: server CPU {cpu[tree][-1]:6.0f} us/session, "
                      f"{args.sessions / result['elapsed']:6.1f} sessions/s", flush=True)
        for tree in trees:
            print(f"median {tree}: {statistics.median(cpu[tree]):6.0f} us/session ({', '.join(f'{c:.0f}' for c in cpu[tree])})")
        if len(trees) == 2:
            ratios = [new / old for old, new in zip(cpu[trees[0]], cpu[trees[1]])]
            print(f"new/old per repetition {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
        return 0
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
