"""The real daemons under load, as a user comparing tlsotp with TLS would measure them (issue 12).

    pip install -e '.[bench]'
    python -m benchmarks.server [--concurrency 1,50,200] [--sessions 1000] [--repetitions 3] [--quick]

Starts a TTP, the real ``twistd -n tlsotp-server`` (EC P-256, default suites) and, beside it, a
Twisted TLS 1.3 mutual-TLS server with a P-256 certificate from the same TTP (the server and
load generator of ``benchmarks/daemon_vs_tls.py``). For each concurrency level, interleaved
(tlsotp, TLS, tlsotp, ...) for ``--repetitions`` rounds, a separate load-generator process runs
``--sessions`` fresh sessions (a new connection and a full handshake each; tlsotp: handshake +
OTP request + grant, committed by the store; TLS: handshake + tiny request + response).

Per configuration (medians of the repetitions): server CPU us/session over the server's whole
process tree (psutil: workers included), sessions/s, client p50/p99 latency, load generator CPU
us/session, the ratios tlsotp/TLS and tlsotp/crypto floor (the suite's primitives timed in
one loop, ``crypto_floor_us``); then RSS per idle connection (500 connections opened and
left silent) and a 500-connect burst (ms until every connect completed); and the TTP's CPU per
enrollment (``--enrollments`` sequential ones from a separate process) against its signing floor
(CSR load + verify + sign, in one loop). The last table is
printed as RST, ready to paste into docs/performance.rst. Exits 1 if any session failed. The
memory and burst figures are taken first, before any session, from the servers' whole trees.

``--workers N`` is passed to ``tlsotp-server`` when given (the server's ``--workers``); the CPU
is summed over the process tree either way. ``--quick`` (1 and 5 concurrent, 20 sessions, one
repetition) proves the benchmark runs end to end in a few seconds; its numbers mean nothing.
Not a test: on a shared machine absolute numbers are noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import re
import selectors
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.daemon_vs_tls import SELF, TWISTD, free_port, load, percentile, spawn, stop, tlsotp, wait_listening

IDLE_CONNECTIONS = 500
BURST = 500
COLUMNS = ("concurrent", "server", "server CPU us/session", "sessions/s", "p50 ms", "p99 ms", "load gen CPU us/session")


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and all its live descendants."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.is_running())


def idle_rss_per_connection(pid: int, port: int, count: int) -> float:
    """Bytes of RSS the server's tree grows by per silent open connection."""
    before = tree_rss(pid)
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        time.sleep(1.0)  # let the server accept and set each one up
        after = tree_rss(pid)
    finally:
        for s in sockets:
            s.close()
    return (after - before) / count


def burst_ms(port: int, count: int) -> float:
    """Milliseconds until ``count`` connects started at once have all completed (a backlog
    overflow shows as a 1 s SYN retransmit)."""
    selector = selectors.DefaultSelector()
    sockets = []
    start = time.perf_counter()
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        selector.register(s, selectors.EVENT_WRITE)
        sockets.append(s)
    pending = count
    deadline = start + 30
    while pending and time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=1):
            selector.unregister(key.fileobj)
            pending -= 1
    elapsed = (time.perf_counter() - start) * 1e3
    for s in sockets:
        s.close()
    selector.close()
    return elapsed if not pending else float("inf")


def crypto_floor_us(rounds: int = 300) -> float:
    """CPU us of the primitives a server must run per session of the default suite
    (TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384, P-256 certificates), timed in one loop:
    an X25519 key pair and exchange, one ECDSA P-256 signature (its CertificateVerify), two
    ECDSA verifications (the client's CertificateVerify and its certificate's signature, which
    TLS checks on every handshake), a dozen HMAC-SHA384 (the HKDF key schedule), four AES-256-GCM
    records of 100 bytes and a SHA-384 transcript. Nothing else: no parsing, no Python shell."""
    import hashlib
    import hmac
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    server_key, client_key, root_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    client_signature = client_key.sign(b"t" * 48, ec.ECDSA(hashes.SHA256()))
    cert_signature = root_key.sign(b"c" * 400, ec.ECDSA(hashes.SHA256()))
    peer_share = x25519.X25519PrivateKey.generate().public_key()
    aead, nonce, record = AESGCM(os.urandom(32)), os.urandom(12), os.urandom(100)
    start = time.process_time()
    for _ in range(rounds):
        share = x25519.X25519PrivateKey.generate()
        share.public_key().public_bytes_raw()
        secret = share.exchange(peer_share)
        server_key.sign(b"t" * 48, ec.ECDSA(hashes.SHA256()))
        client_key.public_key().verify(client_signature, b"t" * 48, ec.ECDSA(hashes.SHA256()))
        root_key.public_key().verify(cert_signature, b"c" * 400, ec.ECDSA(hashes.SHA256()))
        for _ in range(12):
            secret = hmac.new(secret, b"tls13 label", hashlib.sha384).digest()
        for _ in range(4):
            aead.encrypt(nonce, record, b"")
        hashlib.sha384(b"h" * 1500).digest()
    return (time.process_time() - start) / rounds * 1e6


def signing_floor_us(rounds: int = 200) -> float:
    """CPU us of what the TTP must compute per enrollment, timed in one loop: load a client's
    CSR (DER), verify its signature, and build and sign its certificate (EC P-256 root, the
    ``tlsotp ttp init`` default, and a P-256 client key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tlsotp.pki.csr import build_csr

    root_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    csr_der = build_csr(client_key, "alice.example").public_bytes(serialization.Encoding.DER)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlsotp root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    start = time.process_time()
    for _ in range(rounds):
        csr = x509.load_der_x509_csr(csr_der)
        assert csr.is_signature_valid
        (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(issuer).public_key(csr.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=7))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName("alice.example")]), critical=False)
         .sign(root_key, hashes.SHA256()))
    return (time.process_time() - start) / rounds * 1e6


def enroll_main(argv: list[str]) -> None:
    """A load process for the TTP: enroll once per token, one after another; one JSON line out."""
    import json

    from twisted.internet import defer, task

    from tlsotp.pki.credentials import RootPin
    from tlsotp.pki.roles import Role
    from tlsotp.services.enrollment import enroll

    ttp, fingerprint, base, tokens_json = argv

    async def body(reactor: Any) -> None:
        failures = 0
        for i, token in enumerate(json.loads(tokens_json)):
            try:
                await enroll(reactor, ttp, data_dir=Path(base) / f"c{i}", pin=RootPin.from_fingerprint(fingerprint),
                             token=token, name=f"c{i}.example", role=Role.CLIENT)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failures += 1
                print(f"enrollment {i} failed: {exc}", file=sys.stderr)
        print(json.dumps({"failed": failures}), flush=True)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))


def enrollment_cpu_us(ttp_process: Any, ttp: str, fingerprint: str, work: Path, count: int) -> tuple[float, int]:
    """The TTP tree's CPU us per enrollment over ``count`` sequential enrollments, and failures."""
    import datetime
    import json
    import subprocess

    from benchmarks.daemon_vs_tls import REPO, env
    from tlsotp.pki.roles import Role
    from tlsotp.ttp.ca import TTPPaths
    from tlsotp.ttp.store import Store

    store = Store.open(TTPPaths(work / "ttp").db)
    try:
        now = datetime.datetime.now(datetime.timezone.utc)
        tokens = [str(store.mint_token(f"c{i}.example", Role.CLIENT, ttl=datetime.timedelta(hours=1), now=now))
                  for i in range(count)]
    finally:
        store.close()
    before = tree_cpu(ttp_process.pid)
    out = subprocess.run([sys.executable, "-m", "benchmarks.server", "--enroll-load", ttp, fingerprint,
                          str(work / "enrolled"), json.dumps(tokens)],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    after = tree_cpu(ttp_process.pid)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    failed = json.loads(lines[-1])["failed"] if lines else count
    if out.returncode or failed:
        print(out.stderr[-2000:], file=sys.stderr)
    return (after - before) / count * 1e6, failed


def rst_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(c) for c in column) for column in zip(header, *rows)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(rule)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,50,200", help="comma-separated levels")
    parser.add_argument("--sessions", type=int, default=1000, help="sessions per run (at 1 concurrent: a fifth)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="passed to tlsotp-server as --workers N")
    parser.add_argument("--enrollments", type=int, default=50, help="sequential TTP enrollments timed")
    parser.add_argument("--quick", action="store_true", help="1 and 5 concurrent, 20 sessions, 1 repetition")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.sessions, args.repetitions, args.enrollments = "1,5", 20, 1, 3
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tlsotp-bench-"))
    processes: list[Any] = []
    started = time.perf_counter()
    try:
        match = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(work / "ttp")))
        assert match is not None
        fingerprint = match.group(0)

        def token(name: str, role: str) -> str:
            return tlsotp("ttp", "token", "--data-dir", str(work / "ttp"), "--name", name, "--role", role).strip().splitlines()[-1]

        ttp_port, bank_port, tls_port = free_port(), free_port(), free_port()
        ttp = f"tcp:host=127.0.0.1:port={ttp_port}"
        processes.append(spawn([*TWISTD, "-n", "--pidfile", "", "--logfile", str(work / "ttp.log"), "tlsotp-ttp",
                                "--data-dir", str(work / "ttp"), "--listen", f"tcp:{ttp_port}:interface=127.0.0.1"],
                               work / "ttp.out"))
        wait_listening(processes[-1], ttp_port, "the TTP")
        workers = ["--workers", str(args.workers)] if args.workers is not None else []
        bank = spawn([
            *TWISTD, "-n", "--pidfile", "", "--logfile", str(work / "server.log"), "tlsotp-server",
            "--data-dir", str(work / "server"), "--name", "bank.example",
            "--listen", f"tcp:{bank_port}:interface=127.0.0.1:backlog=1024", "--ttp", ttp,
            "--ca-fingerprint", fingerprint, "--token", token("bank.example", "server"), "--key-type", "ec-p256",
            "--max-connections", "2048", "--max-per-address", "2048", *workers,
        ], work / "server.out")
        processes.append(bank)
        for data_dir, name, role in ((work / "tls-server", "tlsbank.example", "server"),
                                     (work / "client", "alice.example", "client")):
            tlsotp("enroll", "--data-dir", str(data_dir), "--ttp", ttp, "--ca-fingerprint", fingerprint,
                   "--token", token(name, role), "--name", name, "--role", role, "--key-type", "ec-p256")
        tlsotp("crl", "--data-dir", str(work / "client"), "--ttp", ttp)
        tls = spawn([*SELF, "--tls-server", str(work / "tls-server"), str(tls_port)], work / "tls-server.out")
        processes.append(tls)
        wait_listening(bank, bank_port, "the tlsotp server")
        wait_listening(tls, tls_port, "the TLS server")
        targets = {"tlsotp": (bank, bank_port, "bank.example"), "tls": (tls, tls_port, "tlsbank.example")}
        # Memory first, on servers that have run no session yet: after a load, the connections'
        # memory would come from heap already freed by earlier sessions and show as ~0.
        floor = crypto_floor_us()
        enrollment = enrollment_cpu_us(processes[0], ttp, fingerprint, work, args.enrollments)
        if enrollment[1]:
            failed = True
        enrollment_floor = signing_floor_us()
        extras = {}
        for kind, (process, port, _) in targets.items():
            extras[kind] = (idle_rss_per_connection(process.pid, port, IDLE_CONNECTIONS), burst_ms(port, BURST))
        for kind, (_, port, name) in targets.items():  # warm-up (imports, first database pages)
            load(kind, work, port, name, 5, 20, "warm")
        rows: list[dict[str, Any]] = []
        failed = False
        for rep in range(1, args.repetitions + 1):
            for level in levels:
                sessions = max(args.sessions // 5, 10) if level == 1 else args.sessions
                for kind, (process, port, name) in targets.items():
                    before = tree_cpu(process.pid)
                    result = load(kind, work, port, name, level, sessions, f"{rep}-{level}")
                    after = tree_cpu(process.pid)
                    done = len(result["latencies"])
                    if result["failed"] or done != sessions:
                        failed = True
                        print(f"{kind} at {level} run {rep}: {result['failed']} failed: {result['failures']}", file=sys.stderr)
                    rows.append({
                        "kind": kind, "rep": rep, "level": level, "sessions": done,
                        "cpu_us": (after - before) / max(done, 1) * 1e6, "rate": done / result["elapsed"],
                        "p50": percentile(result["latencies"], 50) * 1e3 if done else float("nan"),
                        "p99": percentile(result["latencies"], 99) * 1e3 if done else float("nan"),
                        "load_cpu_us": result["cpu"] / max(done, 1) * 1e6,
                    })
                    r = rows[-1]
                    print(f"run {rep} {level:>3} concurrent {kind:<6} {done:>5} sessions  server CPU {r['cpu_us']:6.0f} us/session  "
                          f"{r['rate']:6.1f}/s  p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  "
                          f"load gen CPU {r['load_cpu_us']:6.0f} us/session", flush=True)
        print()
        print(render(rows, levels, extras, floor, args, time.perf_counter() - started))
        print()
        print(rst_table(("TTP enrollment", "TTP CPU us/enrollment", "signing floor us", "ratio"), [(
            f"{args.enrollments} sequential, EC P-256", f"{enrollment[0]:.0f}", f"{enrollment_floor:.0f}",
            f"{enrollment[0] / enrollment_floor:.2f}x")]))
        return 1 if failed else 0
    finally:
        for process in reversed(processes):
            stop(process)
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def render(rows: list[dict[str, Any]], levels: list[int], extras: dict[str, tuple[float, float]], floor: float,
           args: argparse.Namespace, elapsed: float) -> str:
    label = {"tlsotp": "tlsotp-server", "tls": "Twisted TLS 1.3 mTLS"}
    table: list[tuple[str, ...]] = []
    ratios: list[str] = []
    for level in levels:
        median: dict[str, float] = {}
        for kind in ("tlsotp", "tls"):
            mine = [r for r in rows if r["kind"] == kind and r["level"] == level]
            values = {k: statistics.median(r[k] for r in mine) for k in ("cpu_us", "rate", "p50", "p99", "load_cpu_us")}
            median[kind] = values["cpu_us"]
            table.append((str(level), label[kind], f"{values['cpu_us']:.0f}", f"{values['rate']:.1f}",
                          f"{values['p50']:.1f}", f"{values['p99']:.1f}", f"{values['load_cpu_us']:.0f}"))
        per_rep = [
            next(r["cpu_us"] for r in rows if r["kind"] == "tlsotp" and r["rep"] == rep and r["level"] == level)
            / next(r["cpu_us"] for r in rows if r["kind"] == "tls" and r["rep"] == rep and r["level"] == level)
            for rep in range(1, args.repetitions + 1)
        ]
        ratios.append(f"- {level} concurrent: server CPU per session tlsotp/TLS {median['tlsotp'] / median['tls']:.2f}x "
                      f"(medians; per repetition {', '.join(f'{r:.2f}x' for r in per_rep)}), "
                      f"tlsotp/floor {median['tlsotp'] / floor:.2f}x")
    memory = [(label[kind], f"{rss / 1024:.1f}", f"{ms:.0f}") for kind, (rss, ms) in extras.items()]
    return "\n".join([
        f"{args.repetitions} interleaved repetition(s), {args.sessions} sessions per run ({max(args.sessions // 5, 10)} at 1 "
        f"concurrent), EC P-256 certificates from one TTP, server CPU over its process tree; medians; "
        f"{psutil.cpu_count()} CPUs, load average {', '.join(f'{x:.1f}' for x in psutil.getloadavg())}; "
        f"run took {elapsed:.0f} s", "",
        rst_table(COLUMNS, table), "",
        f"Crypto floor of TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384 with P-256 certificates "
        f"(X25519, 1 ECDSA sign + 2 verify, HKDF, AES-GCM records; one loop): {floor:.0f} us/session", "",
        *ratios, "",
        rst_table(("server", f"RSS per idle connection KiB ({IDLE_CONNECTIONS} open)", f"{BURST} connects in a burst, ms"),
                  memory),
    ])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--enroll-load"]:
        enroll_main(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
