"""The TTP's decision code alone, in one process: ``Issuer.handle_group`` CPU per enrollment.

    python -m benchmarks.issuer_cost [--enrollments 240] [--gap-ms 5]

A real CA and SQLite store in a temporary data dir (``tlsotp ttp init``'s defaults: EC P-256,
WAL, ``synchronous=FULL``), real enrollment requests (a fresh P-256 key, CSR and token proof
each, made before the clock starts), decided by ``Issuer.handle_group`` in groups of 1 and of 16,
hot (one group after another), and alone with the process asleep ``--gap-ms`` before each (as a
TTP serving one enrollment at a time starts each cold), interleaved in slices; beside them
the signing floor in the same process (``benchmarks.server.signing_floor_us``), hot and with the
same gap. No network, no reactor, no log: what the daemon's worker thread does, and the share
of it this machine adds for starting cold. Not a test: compare the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.server import prepared_requests, signing_floor_us


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--enrollments", type=int, default=240, help="enrollments per configuration (a multiple of 16)")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="idle wait before each group in the cold runs")
    args = parser.parse_args(argv)

    from tlsotp.pki.roles import Role
    from tlsotp.ttp import wire
    from tlsotp.ttp.ca import TTPPaths, init_ca
    from tlsotp.ttp.issuer import Issuer
    from tlsotp.ttp.store import Store

    configurations = [(1, 0.0), (16, 0.0), (1, args.gap_ms / 1000)]
    slices = 4
    per_slice = args.enrollments // slices // 16 * 16
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "ttp"
        ca = init_ca(data_dir)
        store = Store.open(TTPPaths(data_dir).db)
        issuer = Issuer(ca, store)
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = 0

        def requests(count: int) -> list[bytes]:
            nonlocal serial
            first, serial = serial, serial + count
            tokens = [str(store.mint_token(f"c{i}.example", Role.CLIENT, ttl=datetime.timedelta(hours=1), now=now))
                      for i in range(first, serial)]
            return [wire.encode(request) for request in prepared_requests(tokens, first)]

        issuer.handle_group(requests(32))  # warm-up: imports, SQLite's page cache
        spent: dict[tuple[int, float], list[float]] = {c: [] for c in configurations}
        for _ in range(slices):
            for size, gap in configurations:
                payloads = requests(per_slice)
                cpu = 0.0
                for i in range(0, len(payloads), size):
                    if gap:
                        time.sleep(gap)
                    start = time.thread_time()
                    outcomes = issuer.handle_group(payloads[i:i + size])
                    cpu += time.thread_time() - start
                    if not all(isinstance(o.reply, wire.Issued) for _, o in outcomes):
                        print(f"not issued: {[o.summary for _, o in outcomes]}", file=sys.stderr)
                        return 1
                spent[(size, gap)].append(cpu / len(payloads) * 1e6)
        store.close()
    floor = signing_floor_us()
    cold_floor = signing_floor_us(gap=args.gap_ms / 1000)
    print(f"Issuer.handle_group in one process, {slices} interleaved slices of {per_slice} enrollments per "
          f"configuration; signing floor {floor:.0f} us hot, {cold_floor:.0f} us with {args.gap_ms:g} ms idle before "
          "each round")
    for (size, gap), figures in spent.items():
        median = statistics.median(figures)
        base = cold_floor if gap else floor
        kind = f"{args.gap_ms:g} ms idle before each" if gap else "hot"
        print(f"  groups of {size:2d}, {kind}: {median:.0f} us CPU per enrollment (slices "
              + ", ".join(f"{f:.0f}" for f in figures) + f"), {median / base:.2f}x the floor timed the same way")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
